//! Register maps for meters that do not speak SunSpec, loaded from TOML.
//!
//! ```toml
//! name = "eastron-sdm630"
//! manufacturer = "Eastron"
//! model = "SDM630"
//! [import_wh]              # also export_wh (required), pv_wh and power_w (optional), serial (optional)
//! register = 0x0048        # protocol address (0-based)
//! function = "input"       # or "holding"
//! type = "f32"             # u16, i16, u32, i32, u64, i64, f32
//! word_order = "high_first" # or "low_first" for 32/64-bit values
//! scale_pow10 = 3          # value × 10^3: kWh → Wh
//! negate = false           # true when the device counts the other way (e.g. power positive exporting)
//! not_available = "0xFFFFFFFF" # optional: the raw pattern the device sends for "no value"
//! ```
//!
//! **Decoding.** Integer registers are scaled exactly (in 128-bit integers; a negative `scale_pow10`
//! rounds to the nearest integer, halves away from zero); floats are scaled in f64 and rounded the same
//! way. A value equal to the register's `not_available` pattern, or a float NaN, is absent (`None`).
//! A value is refused with [`ProfileError::Value`], naming the profile, the quantity and the raw value,
//! when it is infinite, when its magnitude after scaling exceeds [`VALUE_ABS_MAX`] (2^53, far above
//! any household meter and where f64 stops holding every integer), or when an energy counter,
//! capacity or state of charge is negative.
//!
//! A hybrid inverter's battery is optional: `battery_soc_permille` (0–1000), `battery_capacity_wh`,
//! `battery_charge_wh` and `battery_discharge_wh` (cumulative AC counters), `battery_power_w`
//! (positive charging).

use crate::modbus::{Function, ModbusClient, ModbusError};
use serde::Deserialize;
use std::path::Path;

/// Largest profile file we read: real ones are a few hundred bytes.
pub const PROFILE_BYTES_MAX: u64 = 64 * 1024;

/// Largest magnitude of a decoded value (after scaling): 2^53.
pub const VALUE_ABS_MAX: i128 = 1 << 53;

/// Profiles shipped in the binary, by name.
pub const SHIPPED: [(&str, &str); 7] = [
    ("eastron-sdm630", include_str!("../profiles/eastron-sdm630.toml")),
    ("eastron-sdm72", include_str!("../profiles/eastron-sdm72.toml")),
    ("eastron-sdm120", include_str!("../profiles/eastron-sdm120.toml")),
    ("abb-b23", include_str!("../profiles/abb-b23.toml")),
    ("schneider-iem3000", include_str!("../profiles/schneider-iem3000.toml")),
    ("carlo-gavazzi-em24", include_str!("../profiles/carlo-gavazzi-em24.toml")),
    ("huawei-sun2000-luna2000", include_str!("../profiles/huawei-sun2000-luna2000.toml")),
];
/// Short aliases for shipped profiles.
pub const ALIASES: [(&str, &str); 13] = [
    ("sdm630", "eastron-sdm630"),
    ("sdm72", "eastron-sdm72"),
    ("sdm72d-m", "eastron-sdm72"),
    ("sdm120", "eastron-sdm120"),
    ("b23", "abb-b23"),
    ("b24", "abb-b23"),
    ("abb-b24", "abb-b23"),
    ("iem3000", "schneider-iem3000"),
    ("iem3155", "schneider-iem3000"),
    ("iem3255", "schneider-iem3000"),
    ("iem3355", "schneider-iem3000"),
    ("em24", "carlo-gavazzi-em24"),
    ("sun2000", "huawei-sun2000-luna2000"),
];

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
    #[error("profile {profile}: {quantity} raw value {raw} refused: {refusal}")]
    Value { profile: String, quantity: &'static str, raw: String, refusal: ValueRefusal },
    #[error(transparent)]
    Modbus(#[from] ModbusError),
}

/// Why a decoded register value is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValueRefusal {
    #[error("infinite")]
    Infinite,
    #[error("magnitude after scaling above 2^53")]
    OutOfRange,
    #[error("negative, but it counts energy or charge")]
    Negative,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
}

impl ValueType {
    /// Registers the value takes.
    pub fn words(self) -> u16 {
        match self {
            ValueType::U16 | ValueType::I16 => 1,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
            ValueType::U64 | ValueType::I64 => 4,
        }
    }
}

/// A raw register pattern (the words joined in the register's word order, high first), written in a
/// profile as a string of hex (`"0xFFFFFFFF"`) or decimal digits, or as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPattern(pub u64);

impl<'de> Deserialize<'de> for RawPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Text(String),
            Number(i64),
        }
        let invalid = |text: &str| serde::de::Error::custom(format!("`{text}` is not a u64 in hex (0x...) or decimal"));
        match Written::deserialize(deserializer)? {
            Written::Number(number) => u64::try_from(number).map(RawPattern).map_err(|_| invalid(&number.to_string())),
            Written::Text(text) => {
                let digits = text.replace('_', "");
                let parsed = match digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => digits.parse(),
                };
                parsed.map(RawPattern).map_err(|_| invalid(&text))
            }
        }
    }
}

/// A register's value before scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RawValue {
    Integer(i128),
    Float(f64),
}

impl std::fmt::Display for RawValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawValue::Integer(value) => write!(f, "{value}"),
            RawValue::Float(value) => write!(f, "{value}"),
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
    /// The raw pattern the device sends when it has no value.
    #[serde(default)]
    pub not_available: Option<RawPattern>,
}

/// A device's register map. Optional quantities are boxed: most profiles leave them out, and a
/// profile stays small next to a SunSpec device in the gateway's source.
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
    pub pv_wh: Option<Box<Register>>,
    #[serde(default)]
    pub power_w: Option<Box<Register>>,
    #[serde(default)]
    pub serial: Option<Box<Register>>,
    #[serde(default)]
    pub battery_soc_permille: Option<Box<Register>>,
    #[serde(default)]
    pub battery_capacity_wh: Option<Box<Register>>,
    #[serde(default)]
    pub battery_charge_wh: Option<Box<Register>>,
    #[serde(default)]
    pub battery_discharge_wh: Option<Box<Register>>,
    #[serde(default)]
    pub battery_power_w: Option<Box<Register>>,
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
    /// The words joined in the register's word order (high first), or `None` when too few words.
    fn joined(&self, words: &[u16]) -> Option<u64> {
        let count = usize::from(self.value_type.words());
        let mut ordered: Vec<u16> = words.iter().copied().take(count).collect();
        if ordered.len() != count {
            return None;
        }
        if self.word_order == WordOrder::LowFirst {
            ordered.reverse();
        }
        Some(ordered.iter().fold(0u64, |acc, word| (acc << 16) | u64::from(*word)))
    }

    /// The raw value before scaling; `None` for too few words, the `not_available` pattern or a NaN.
    pub fn raw(&self, words: &[u16]) -> Option<RawValue> {
        let wide = self.joined(words)?;
        if self.not_available.is_some_and(|pattern| pattern.0 == wide) {
            return None;
        }
        Some(match self.value_type {
            ValueType::U16 | ValueType::U32 | ValueType::U64 => RawValue::Integer(i128::from(wide)),
            ValueType::I16 => RawValue::Integer(i128::from(wide as u16 as i16)),
            ValueType::I32 => RawValue::Integer(i128::from(wide as u32 as i32)),
            ValueType::I64 => RawValue::Integer(i128::from(wide as i64)),
            ValueType::F32 => {
                let value = f64::from(f32::from_bits(wide as u32));
                if value.is_nan() {
                    return None;
                }
                RawValue::Float(value)
            }
        })
    }

    /// The raw value as a float, for display (a serial number); `None` as [`Register::raw`] or infinite.
    pub fn decode_raw(&self, words: &[u16]) -> Option<f64> {
        let value = match self.raw(words)? {
            RawValue::Integer(value) => value as f64,
            RawValue::Float(value) => value,
        };
        value.is_finite().then_some(value)
    }

    /// The value scaled by `10^scale_pow10`, negated if so configured, and rounded to an integer
    /// (halves away from zero): `Ok(None)` when absent (see [`Register::raw`]); refused when infinite
    /// or its magnitude exceeds [`VALUE_ABS_MAX`].
    pub fn decode(&self, words: &[u16]) -> Result<Option<i64>, ValueRefusal> {
        let Some(raw) = self.raw(words) else { return Ok(None) };
        let scaled: i128 = match raw {
            RawValue::Integer(value) => scale_integer(value, self.scale_pow10).ok_or(ValueRefusal::OutOfRange)?,
            RawValue::Float(value) => {
                if value.is_infinite() {
                    return Err(ValueRefusal::Infinite);
                }
                let scaled = (value * 10f64.powi(self.scale_pow10)).round();
                if !scaled.is_finite() || scaled.abs() > VALUE_ABS_MAX as f64 {
                    return Err(ValueRefusal::OutOfRange);
                }
                scaled as i128
            }
        };
        let value = if self.negate { -scaled } else { scaled };
        if value.abs() > VALUE_ABS_MAX {
            return Err(ValueRefusal::OutOfRange);
        }
        i64::try_from(value).map(Some).map_err(|_| ValueRefusal::OutOfRange)
    }

    /// [`Register::decode`] of a quantity that cannot be negative (energy, capacity, state of charge).
    pub fn decode_non_negative(&self, words: &[u16]) -> Result<Option<i64>, ValueRefusal> {
        match self.decode(words)? {
            Some(value) if value < 0 => Err(ValueRefusal::Negative),
            value => Ok(value),
        }
    }

    /// For 32-bit integer counters: the counter's modulus after scaling (for wrap detection).
    pub fn modulus(&self) -> Option<i64> {
        match self.value_type {
            ValueType::U32 | ValueType::I32 => {
                scale_integer(1 << 32, self.scale_pow10).and_then(|modulus| i64::try_from(modulus).ok())
            }
            _ => None,
        }
    }

    async fn read(&self, client: &mut ModbusClient) -> Result<Vec<u16>, ModbusError> {
        client.read_block(self.function, self.register, self.value_type.words()).await
    }
}

/// `value × 10^pow10` exactly, or rounded to the nearest integer (halves away from zero) for a
/// negative `pow10`; `None` when it overflows.
fn scale_integer(value: i128, pow10: i32) -> Option<i128> {
    let factor = 10i128.checked_pow(pow10.unsigned_abs())?;
    if pow10 >= 0 {
        return value.checked_mul(factor);
    }
    let (quotient, remainder) = (value / factor, value % factor);
    let round_away = remainder.unsigned_abs() * 2 >= factor.unsigned_abs();
    Some(if round_away { quotient + value.signum() } else { quotient })
}

impl Profile {
    /// Parses a profile and checks each register's `not_available` pattern fits its type.
    pub fn parse(name: &str, text: &str) -> Result<Self, ProfileError> {
        let invalid = |reason: String| ProfileError::Invalid { name: name.to_owned(), reason };
        let profile: Self = toml::from_str(text).map_err(|error| invalid(error.to_string()))?;
        for (quantity, register) in profile.registers() {
            let bits = u32::from(register.value_type.words()) * 16;
            if let Some(pattern) = register.not_available.filter(|pattern| bits < 64 && pattern.0 >> bits != 0) {
                return Err(invalid(format!(
                    "{quantity}: not_available {:#X} does not fit a {bits}-bit {:?}",
                    pattern.0, register.value_type
                )));
            }
        }
        Ok(profile)
    }

    /// Every register of the profile with its quantity's name.
    pub fn registers(&self) -> Vec<(&'static str, &Register)> {
        let optional = [
            ("pv_wh", &self.pv_wh),
            ("power_w", &self.power_w),
            ("serial", &self.serial),
            ("battery_soc_permille", &self.battery_soc_permille),
            ("battery_capacity_wh", &self.battery_capacity_wh),
            ("battery_charge_wh", &self.battery_charge_wh),
            ("battery_discharge_wh", &self.battery_discharge_wh),
            ("battery_power_w", &self.battery_power_w),
        ];
        let mut registers = vec![("import_wh", &self.import_wh), ("export_wh", &self.export_wh)];
        registers
            .extend(optional.into_iter().filter_map(|(quantity, register)| Some((quantity, &**register.as_ref()?))));
        registers
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
    /// A value the checks refuse fails the whole read ([`ProfileError::Value`]): nothing is published
    /// from a device that reports nonsense.
    pub async fn read(&self, client: &mut ModbusClient) -> Result<ProfileValues, ProfileError> {
        let mut values = ProfileValues { counter_modulus_wh: self.import_wh.modulus(), ..ProfileValues::default() };
        let required = [
            ("import_wh", &self.import_wh, &mut values.import_wh),
            ("export_wh", &self.export_wh, &mut values.export_wh),
        ];
        for (quantity, register, value) in required {
            *value = self.quantity(quantity, register, true, client).await?;
        }
        let optional = [
            ("pv_wh", &self.pv_wh, true, &mut values.pv_wh),
            ("power_w", &self.power_w, false, &mut values.power_w),
            ("battery_soc_permille", &self.battery_soc_permille, true, &mut values.battery_soc_permille),
            ("battery_capacity_wh", &self.battery_capacity_wh, true, &mut values.battery_capacity_wh),
            ("battery_charge_wh", &self.battery_charge_wh, true, &mut values.battery_charge_wh),
            ("battery_discharge_wh", &self.battery_discharge_wh, true, &mut values.battery_discharge_wh),
            ("battery_power_w", &self.battery_power_w, false, &mut values.battery_power_w),
        ];
        for (quantity, register, non_negative, value) in optional {
            if let Some(register) = register {
                *value = self.quantity(quantity, register, non_negative, client).await?;
            }
        }
        if let Some(register) = &self.serial {
            values.serial = register.decode_raw(&register.read(client).await?).map(|raw| format!("{raw:.0}"));
        }
        Ok(values)
    }

    /// Reads and decodes one quantity, naming it in a refusal.
    async fn quantity(
        &self,
        quantity: &'static str,
        register: &Register,
        non_negative: bool,
        client: &mut ModbusClient,
    ) -> Result<Option<i64>, ProfileError> {
        let words = register.read(client).await?;
        let decoded = if non_negative { register.decode_non_negative(&words) } else { register.decode(&words) };
        decoded.map_err(|refusal| ProfileError::Value {
            profile: self.name.clone(),
            quantity,
            raw: register.raw(&words).map_or_else(|| format!("{words:04X?}"), |raw| raw.to_string()),
            refusal,
        })
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
        for (alias, name) in ALIASES {
            assert_eq!(Profile::load(alias).expect("alias").name, name);
            assert!(SHIPPED.iter().any(|(shipped, _)| *shipped == name), "{alias} names a shipped profile");
        }
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
            not_available: None,
        };
        let kwh = 1234.5f32.to_bits();
        let words = [(kwh >> 16) as u16, kwh as u16];
        assert_eq!(reg(ValueType::F32, WordOrder::HighFirst, 3).decode(&words), Ok(Some(1_234_500)));
        assert_eq!(reg(ValueType::I32, WordOrder::LowFirst, 2).decode(&[0x0010, 0x0000]), Ok(Some(1_600)));
        assert_eq!(reg(ValueType::I32, WordOrder::HighFirst, -1).decode(&[0xFFFF, 0xFFF6]), Ok(Some(-1)));
        assert_eq!(reg(ValueType::I16, WordOrder::HighFirst, 0).decode(&[0xFFFE]), Ok(Some(-2)));
        assert_eq!(reg(ValueType::U64, WordOrder::HighFirst, 0).decode(&[0, 0, 1, 0]), Ok(Some(65_536)));
        assert_eq!(reg(ValueType::F32, WordOrder::HighFirst, 0).decode(&[0x7FC0, 0]), Ok(None));
        assert_eq!(reg(ValueType::U32, WordOrder::HighFirst, 2).modulus(), Some(429_496_729_600));
    }

    #[test]
    fn integers_scale_exactly_and_round_halves_away_from_zero() {
        let reg = |value_type, scale_pow10| Register {
            register: 0,
            function: Function::Holding,
            value_type,
            word_order: WordOrder::HighFirst,
            scale_pow10,
            negate: false,
            not_available: None,
        };
        // 2^53 + 1 survives as an integer (it would not through f64), but is above the limit.
        let big = (1u64 << 53) + 1;
        let words = [(big >> 48) as u16, (big >> 32) as u16, (big >> 16) as u16, big as u16];
        assert_eq!(reg(ValueType::U64, 0).decode(&words), Err(ValueRefusal::OutOfRange));
        let below = (1u64 << 53) - 1;
        let words = [(below >> 48) as u16, (below >> 32) as u16, (below >> 16) as u16, below as u16];
        assert_eq!(reg(ValueType::U64, 0).decode(&words), Ok(Some(9_007_199_254_740_991)));
        assert_eq!(reg(ValueType::I64, 0).decode(&[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]), Ok(Some(-2)));
        assert_eq!(reg(ValueType::I32, -1).decode(&[0, 15]), Ok(Some(2)), "1.5 rounds to 2");
        assert_eq!(reg(ValueType::I32, -1).decode(&[0xFFFF, 0xFFF1]), Ok(Some(-2)), "-1.5 rounds to -2");
        assert_eq!(reg(ValueType::I32, -1).decode(&[0, 14]), Ok(Some(1)));
        assert_eq!(reg(ValueType::I16, 0).decode_non_negative(&[0xFFFF]), Err(ValueRefusal::Negative));
        let inf = f32::INFINITY.to_bits();
        assert_eq!(reg(ValueType::F32, 0).decode(&[(inf >> 16) as u16, inf as u16]), Err(ValueRefusal::Infinite));
        let all_ones = Register { not_available: Some(RawPattern(u64::MAX)), ..reg(ValueType::U64, 1) };
        assert_eq!(all_ones.decode(&[0xFFFF; 4]), Ok(None), "the device's no-value pattern");
    }

    #[test]
    fn a_not_available_pattern_wider_than_its_register_is_invalid() {
        let text = |pattern: &str| {
            format!(
                "name = \"x\"\n[import_wh]\nregister = 0\nfunction = \"holding\"\ntype = \"u32\"\nnot_available = \"{pattern}\"\n\
                 [export_wh]\nregister = 2\nfunction = \"holding\"\ntype = \"u32\"\n"
            )
        };
        assert!(Profile::parse("x", &text("0xFFFFFFFF")).is_ok());
        match Profile::parse("x", &text("0x1FFFFFFFF")) {
            Err(ProfileError::Invalid { reason, .. }) => assert!(reason.contains("import_wh"), "{reason}"),
            other => panic!("expected an invalid profile, got {other:?}"),
        }
    }

    #[test]
    fn not_available_patterns_parse_from_hex_or_decimal() {
        let register = |pattern: &str| {
            toml::from_str::<Register>(&format!(
                "register = 0\nfunction = \"holding\"\ntype = \"u64\"\nnot_available = {pattern}"
            ))
        };
        assert_eq!(register("\"0xFFFFFFFFFFFFFFFF\"").expect("hex").not_available, Some(RawPattern(u64::MAX)));
        assert_eq!(register("\"0x7FFF_FFFF\"").expect("hex").not_available, Some(RawPattern(0x7FFF_FFFF)));
        assert_eq!(register("2147483647").expect("integer").not_available, Some(RawPattern(0x7FFF_FFFF)));
        assert!(register("\"0xG\"").is_err());
        assert!(register("-1").is_err());
    }
}
