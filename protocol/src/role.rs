//! What a metering device measures: a registry fact that readings do not carry. The utility sets it
//! when it registers the device (`role` in the registration API); a gateway's configuration names it
//! for each unit it reads. Its lowercase names (`grid`, `pv`, `battery`, `submeter`) are the wire form.

use serde::{Deserialize, Serialize};

/// What a device meters. Settlement bills import and credits export from `Grid` meters only; the
/// others sit behind the grid meter, so their energy is already in its counters and they serve
/// reports only (see ARCHITECTURE.md, "Device roles"). A gateway forms a reading by it: a `Pv`
/// device reports its production as `export_wh` and `pv_wh` with `import_wh` 0 (an inverter without
/// a meter model is read as such), every other role reports the meter's import and export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceRole {
    /// The household's connection meter (the role of every device registered before roles existed).
    #[default]
    Grid,
    /// A production meter or inverter behind the grid meter.
    Pv,
    /// A home battery's own meter behind the grid meter (a battery read through the grid meter's
    /// gateway reports in that meter's readings instead, PROTOCOL.md §2).
    Battery,
    /// A circuit behind the grid meter (a heat pump, a charger).
    Submeter,
}

impl DeviceRole {
    pub const ALL: [DeviceRole; 4] = [DeviceRole::Grid, DeviceRole::Pv, DeviceRole::Battery, DeviceRole::Submeter];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceRole::Grid => "grid",
            DeviceRole::Pv => "pv",
            DeviceRole::Battery => "battery",
            DeviceRole::Submeter => "submeter",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == text)
    }

    /// Whether settlement bills and credits this device's counters.
    pub fn is_settled(self) -> bool {
        self == DeviceRole::Grid
    }
}

impl std::fmt::Display for DeviceRole {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceRole;

    #[test]
    fn each_role_reads_back_from_its_wire_name() {
        for role in DeviceRole::ALL {
            assert_eq!(DeviceRole::parse(role.as_str()), Some(role));
            let json = serde_json::to_string(&role).expect("a role serialises");
            assert_eq!(json, format!("\"{role}\""));
            assert_eq!(serde_json::from_str::<DeviceRole>(&json).expect("a role parses"), role);
        }
        assert_eq!(DeviceRole::parse("Grid"), None);
    }
}
