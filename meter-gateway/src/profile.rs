//! Register maps for meters that do not speak SunSpec, loaded from TOML.
//!
//! ```toml
//! name = "eastron-sdm630"
//! manufacturer = "Eastron"
//! model = "SDM630"
//! [import_wh]              # also export_wh (required), pv_wh and power_w (optional), serial (optional)
//! register = 0x0048        # protocol address (0-based)
//! function = "input"       # or "holding"
//! type = "f32"             # u16, i16, u32, i32, u64, f32
//! word_order = "high_first" # or "low_first" for 32/64-bit values
//! scale_pow10 = 3          # value × 10^3: kWh → Wh
//! negate = false           # true when the device counts the other way (e.g. power positive exporting)
//! ```
//!
//! A hybrid inverter's battery is optional: `battery_soc_permille` (0–1000), `battery_capacity_wh`,
//! `battery_charge_wh` and `battery_discharge_wh` (cumulative AC counters), `battery_power_w`
//! (positive charging).

use crate::modbus::{Function, ModbusClient, ModbusError};
use serde::Deserialize;
use std::path::Path;

/// Largest profile file we read: real ones are a few hundred bytes.
pub const PROFILE_BYTES_MAX: u64 = 64 * 1024;

/// Profiles shipped in the binary, by name.
pub const SHIPPED: [(&str, &str); 3] = [
    ("eastron-sdm630", include_str!("../profiles/eastron-sdm630.toml")),
    ("carlo-gavazzi-em24", include_str!("../profiles/carlo-gavazzi-em24.toml")),
    ("huawei-sun2000-luna2000", include_str!("../profiles/huawei-sun2000-luna2000.toml")),
];
/// Short aliases for shipped profiles.
const ALIASES: [(&str, &str); 3] =
    [("sdm630", "eastron-sdm630"), ("em24", "carlo-gavazzi-em24"), ("sun2000", "huawei-sun2000-luna2000")];

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("no shipped profile `{0}` and no such file")]
    Unknown(String),
    #[error("cannot read profile {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("profile {path} is larger than {PROFILE_BYTES_MAX} bytes")]
    TooLarge { path: String },
    #[error("invalid profile {name}: {reason}")]
    Invalid { name: String, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    U16,
    I16,
    U32,
    I32,
    U64,
    F32,
}

impl ValueType {
    pub fn words(self) -> u16 {
        match self {
            ValueType::U16 | ValueType::I16 => 1,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
            ValueType::U64 => 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    #[default]
    HighFirst,
    LowFirst,
}

/// Where and how one quantity is stored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub register: u16,
    pub function: Function,
    #[serde(rename = "type")]
    pub value_type: ValueType,
    #[serde(default)]
    pub word_order: WordOrder,
    #[serde(default)]
    pub scale_pow10: i32,
    /// The value's sign is flipped after decoding.
    #[serde(default)]
    pub negate: bool,
}

/// A device's register map.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub manufacturer: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub import_wh: Register,
    pub export_wh: Register,
    #[serde(default)]
    pub pv_wh: Option<Register>,
    #[serde(default)]
    pub power_w: Option<Register>,
    #[serde(default)]
    pub serial: Option<Register>,
    #[serde(default)]
    pub battery_soc_permille: Option<Register>,
    #[serde(default)]
    pub battery_capacity_wh: Option<Register>,
    #[serde(default)]
    pub battery_charge_wh: Option<Register>,
    #[serde(default)]
    pub battery_discharge_wh: Option<Register>,
    #[serde(default)]
    pub battery_power_w: Option<Register>,
}

/// Values read through a profile, scaled to Wh and W.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileValues {
    pub import_wh: Option<i64>,
    pub export_wh: Option<i64>,
    pub pv_wh: Option<i64>,
    pub power_w: Option<i64>,
    pub serial: Option<String>,
    pub counter_modulus_wh: Option<i64>,
    pub battery_soc_permille: Option<i64>,
    pub battery_capacity_wh: Option<i64>,
    pub battery_charge_wh: Option<i64>,
    pub battery_discharge_wh: Option<i64>,
    pub battery_power_w: Option<i64>,
}

impl Register {
    /// The raw value as a float (all supported types fit f64 exactly except u64 above 2^53).
    pub fn decode_raw(&self, words: &[u16]) -> Option<f64> {
        let mut ordered: Vec<u16> = words.iter().copied().take(usize::from(self.value_type.words())).collect();
        if ordered.len() != usize::from(self.value_type.words()) {
            return None;
        }
        if self.word_order == WordOrder::LowFirst {
            ordered.reverse();
        }
        let wide = ordered.iter().fold(0u64, |acc, word| (acc << 16) | u64::from(*word));
        let value = match self.value_type {
            ValueType::U16 => wide as f64,
            ValueType::I16 => f64::from(wide as u16 as i16),
            ValueType::U32 => wide as f64,
            ValueType::I32 => f64::from(wide as u32 as i32),
            ValueType::U64 => wide as f64,
            ValueType::F32 => f64::from(f32::from_bits(wide as u32)),
        };
        value.is_finite().then_some(value)
    }

    /// The value scaled by `10^scale_pow10` and rounded to an integer.
    pub fn decode(&self, words: &[u16]) -> Option<i64> {
        let value = self.decode_raw(words)? * 10f64.powi(self.scale_pow10);
        let value = if self.negate { -value } else { value };
        (value.abs() < 9.0e15).then_some(value.round() as i64)
    }

    /// For 32-bit integer counters: the counter's modulus after scaling (for wrap detection).
    pub fn modulus(&self) -> Option<i64> {
        match self.value_type {
            ValueType::U32 | ValueType::I32 => {
                let modulus = (1u64 << 32) as f64 * 10f64.powi(self.scale_pow10);
                Some(modulus.round() as i64)
            }
            _ => None,
        }
    }

    async fn read(&self, client: &mut ModbusClient) -> Result<Vec<u16>, ModbusError> {
        client.read_block(self.function, self.register, self.value_type.words()).await
    }
}

impl Profile {
    pub fn parse(name: &str, text: &str) -> Result<Self, ProfileError> {
        toml::from_str(text).map_err(|error| ProfileError::Invalid { name: name.to_owned(), reason: error.to_string() })
    }

    /// A shipped profile by name or alias (`sdm630`), else a file path.
    pub fn load(name_or_path: &str) -> Result<Self, ProfileError> {
        let name = ALIASES.iter().find(|(alias, _)| *alias == name_or_path).map_or(name_or_path, |(_, name)| name);
        if let Some((name, text)) = SHIPPED.iter().find(|(shipped, _)| *shipped == name) {
            return Self::parse(name, text);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(ProfileError::Unknown(name_or_path.to_owned()));
        }
        let io = |source| ProfileError::Io { path: name_or_path.to_owned(), source };
        if std::fs::metadata(path).map_err(io)?.len() > PROFILE_BYTES_MAX {
            return Err(ProfileError::TooLarge { path: name_or_path.to_owned() });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(name_or_path, &text)
    }

    /// Reads every quantity; each register is one request (they are rarely adjacent enough to merge).
    pub async fn read(&self, client: &mut ModbusClient) -> Result<ProfileValues, ModbusError> {
        let import_words = self.import_wh.read(client).await?;
        let export_words = self.export_wh.read(client).await?;
        let mut values = ProfileValues {
            import_wh: self.import_wh.decode(&import_words),
            export_wh: self.export_wh.decode(&export_words),
            counter_modulus_wh: self.import_wh.modulus(),
            ..ProfileValues::default()
        };
        if let Some(register) = &self.pv_wh {
            values.pv_wh = register.decode(&register.read(client).await?);
        }
        if let Some(register) = &self.power_w {
            values.power_w = register.decode(&register.read(client).await?);
        }
        let optional = [
            (&self.battery_soc_permille, &mut values.battery_soc_permille),
            (&self.battery_capacity_wh, &mut values.battery_capacity_wh),
            (&self.battery_charge_wh, &mut values.battery_charge_wh),
            (&self.battery_discharge_wh, &mut values.battery_discharge_wh),
            (&self.battery_power_w, &mut values.battery_power_w),
        ];
        for (register, value) in optional {
            if let Some(register) = register {
                *value = register.decode(&register.read(client).await?);
            }
        }
        if let Some(register) = &self.serial {
            values.serial = register.decode_raw(&register.read(client).await?).map(|raw| format!("{raw:.0}"));
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_profiles_load_by_name_and_alias() {
        for (name, _) in SHIPPED {
            assert_eq!(Profile::load(name).expect("shipped profile parses").name, name);
        }
        assert_eq!(Profile::load("sdm630").expect("alias").name, "eastron-sdm630");
        assert!(matches!(Profile::load("no-such-meter"), Err(ProfileError::Unknown(_))));
    }

    #[test]
    fn word_order_and_types_decode() {
        let reg = |value_type, word_order, scale_pow10| Register {
            register: 0,
            function: Function::Input,
            value_type,
            word_order,
            scale_pow10,
            negate: false,
        };
        let kwh = 1234.5f32.to_bits();
        let words = [(kwh >> 16) as u16, kwh as u16];
        assert_eq!(reg(ValueType::F32, WordOrder::HighFirst, 3).decode(&words), Some(1_234_500));
        assert_eq!(reg(ValueType::I32, WordOrder::LowFirst, 2).decode(&[0x0010, 0x0000]), Some(1_600));
        assert_eq!(reg(ValueType::I32, WordOrder::HighFirst, -1).decode(&[0xFFFF, 0xFFF6]), Some(-1));
        assert_eq!(reg(ValueType::I16, WordOrder::HighFirst, 0).decode(&[0xFFFE]), Some(-2));
        assert_eq!(reg(ValueType::U64, WordOrder::HighFirst, 0).decode(&[0, 0, 1, 0]), Some(65_536));
        assert_eq!(reg(ValueType::F32, WordOrder::HighFirst, 0).decode(&[0x7FC0, 0]), None);
        assert_eq!(reg(ValueType::U32, WordOrder::HighFirst, 2).modulus(), Some(429_496_729_600));
    }
}
