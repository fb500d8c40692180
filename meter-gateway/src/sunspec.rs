//! SunSpec: discovery of the `SunS` marker, the model chain walk, and decoding of the common model (1),
//! inverter models (101–103) and meter models (201–204) with their scale factors and "not implemented"
//! sentinels. Storage models (124, 802) are found here and decoded in [`crate::storage`].
//!
//! Offsets below are relative to the first register after a model's ID and length (the SunSpec
//! information model tables). A value and its scale factor are always read in the same request so a
//! device that changes its scale between two requests cannot produce a wrong number.

use crate::modbus::{Function, ModbusClient, ModbusError};

/// `SunS` as two registers.
pub const MARKER: [u16; 2] = [0x5375, 0x6E53];
/// Base addresses to probe, most common first; each also in its 1-based form (register "40001").
pub const BASE_ADDRESSES: [u16; 6] = [40000, 40001, 50000, 50001, 0, 1];
/// The model id that ends the chain.
pub const END_MODEL_ID: u16 = 0xFFFF;
/// Most models we walk before giving up: real devices have under 20; a loop or garbage stops here.
pub const MODELS_MAX: usize = 64;

pub const MODEL_COMMON: u16 = 1;
pub const COMMON_LEN: u16 = 66;
pub const COMMON_MANUFACTURER: u16 = 0; // 16 registers, string
pub const COMMON_MODEL: u16 = 16; // 16 registers
pub const COMMON_VERSION: u16 = 40; // 8 registers
pub const COMMON_SERIAL: u16 = 48; // 16 registers
pub const COMMON_DEVICE_ADDRESS: u16 = 64;

pub const INVERTER_LEN: u16 = 50;
/// Inverter (101–103): W at 12, W_SF 13, WH (acc32) 22–23, WH_SF 24, St 36. One read of 12..=36.
pub const INV_W: u16 = 12;
pub const INV_W_SF: u16 = 13;
pub const INV_WH: u16 = 22;
pub const INV_WH_SF: u16 = 24;
pub const INV_ST: u16 = 36;

pub const METER_LEN: u16 = 105;
/// Meter (201–204): W 16, W_SF 20, TotWhExp (acc32) 36–37, TotWhImp (acc32) 44–45, TotWh_SF 52.
pub const MTR_W: u16 = 16;
pub const MTR_W_SF: u16 = 20;
pub const MTR_TOT_WH_EXP: u16 = 36;
pub const MTR_TOT_WH_IMP: u16 = 44;
pub const MTR_TOT_WH_SF: u16 = 52;

/// "Not implemented" values per SunSpec type.
pub const NI_UINT16: u16 = 0xFFFF;
pub const NI_INT16: u16 = 0x8000;
pub const NI_SUNSSF: u16 = 0x8000;
pub const NI_ACC32: u32 = 0;
pub const NI_UINT32: u32 = 0xFFFF_FFFF;
pub const NI_INT32: u32 = 0x8000_0000;
pub const NI_FLOAT32: u32 = 0x7FC0_0000;
/// Scale factors outside this range are not in the specification (-10..=10) and are refused.
pub const SCALE_FACTOR_ABS_MAX: i16 = 10;

#[derive(Debug, thiserror::Error)]
pub enum SunSpecError {
    #[error("no SunSpec marker at any of the usual base addresses")]
    NotFound,
    #[error("the model chain does not end within {MODELS_MAX} models")]
    ChainTooLong,
    #[error("the model chain runs past the end of the register space")]
    ChainOverflow,
    #[error("no meter model (201-204) found")]
    NoMeter,
    #[error(transparent)]
    Modbus(#[from] ModbusError),
}

/// One model in the chain: its id, the address of its first data register, and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelEntry {
    pub id: u16,
    pub start: u16,
    pub len: u16,
}

/// What discovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub base: u16,
    pub models: Vec<ModelEntry>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub version: Option<String>,
    pub serial: Option<String>,
}

impl Device {
    pub fn find(&self, ids: std::ops::RangeInclusive<u16>) -> Option<ModelEntry> {
        self.models.iter().copied().find(|entry| ids.contains(&entry.id))
    }
    pub fn meter(&self) -> Option<ModelEntry> {
        self.find(201..=204)
    }
    pub fn inverter(&self) -> Option<ModelEntry> {
        self.find(101..=103)
    }
    /// Basic storage controls (model 124), see [`crate::storage`].
    pub fn storage_basic(&self) -> Option<ModelEntry> {
        let id = crate::storage::MODEL_STORAGE_BASIC;
        self.find(id..=id)
    }
    /// Lithium-ion battery base model (802), see [`crate::storage`].
    pub fn lithium_ion(&self) -> Option<ModelEntry> {
        let id = crate::storage::MODEL_LITHIUM_ION;
        self.find(id..=id)
    }
}

/// Decodes a SunSpec string (two ASCII bytes per register, NUL padded). All NULs is "not implemented".
pub fn decode_string(words: &[u16]) -> Option<String> {
    let bytes: Vec<u8> = words.iter().flat_map(|word| word.to_be_bytes()).collect();
    let text: String = bytes.iter().take_while(|b| **b != 0).map(|b| char::from(*b)).collect();
    let text = text.trim().to_owned();
    if text.is_empty() {
        None
    } else {
        Some(text)
    }
}

pub fn uint16(word: u16) -> Option<u16> {
    (word != NI_UINT16).then_some(word)
}
pub fn int16(word: u16) -> Option<i16> {
    (word != NI_INT16).then_some(word as i16)
}
/// A scale factor: a power of ten between -10 and 10.
pub fn sunssf(word: u16) -> Option<i16> {
    let value = word as i16;
    (word != NI_SUNSSF && value.abs() <= SCALE_FACTOR_ABS_MAX).then_some(value)
}
/// An accumulator (acc32): big-endian word order; 0 means not accumulated.
pub fn acc32(high: u16, low: u16) -> Option<u32> {
    let value = (u32::from(high) << 16) | u32::from(low);
    (value != NI_ACC32).then_some(value)
}
pub fn uint32(high: u16, low: u16) -> Option<u32> {
    let value = (u32::from(high) << 16) | u32::from(low);
    (value != NI_UINT32).then_some(value)
}
pub fn float32(high: u16, low: u16) -> Option<f32> {
    let bits = (u32::from(high) << 16) | u32::from(low);
    let value = f32::from_bits(bits);
    (bits != NI_FLOAT32 && value.is_finite()).then_some(value)
}

/// `value × 10^sf` as an integer, rounded towards zero for negative scale factors.
pub fn scaled(value: i64, sf: i16) -> Option<i64> {
    if sf >= 0 {
        value.checked_mul(10i64.checked_pow(u32::from(sf.unsigned_abs()))?)
    } else {
        Some(value / 10i64.checked_pow(u32::from(sf.unsigned_abs()))?)
    }
}

/// One poll of the values we publish, all already scaled to Wh and W; `None` when the device does not
/// implement the value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeterValues {
    pub import_wh: Option<i64>,
    pub export_wh: Option<i64>,
    /// Net power at the grid point, positive when importing.
    pub power_w: Option<i64>,
    /// The counter's modulus in Wh when it comes from a 32-bit register (for wrap detection).
    pub counter_modulus_wh: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InverterValues {
    pub power_w: Option<i64>,
    pub energy_wh: Option<i64>,
    pub operating_state: Option<u16>,
    pub counter_modulus_wh: Option<i64>,
}

fn word(words: &[u16], offset: u16) -> u16 {
    words.get(usize::from(offset)).copied().unwrap_or(NI_UINT16)
}

/// Decodes the meter block read from offset [`MTR_W`] to [`MTR_TOT_WH_SF`] inclusive.
pub fn decode_meter(words: &[u16]) -> MeterValues {
    let at = |offset: u16| word(words, offset - MTR_W);
    let w_sf = sunssf(at(MTR_W_SF));
    let wh_sf = sunssf(at(MTR_TOT_WH_SF));
    let power_w = int16(at(MTR_W)).zip(w_sf).and_then(|(value, sf)| scaled(i64::from(value), sf));
    let counter =
        |offset: u16| acc32(at(offset), at(offset + 1)).zip(wh_sf).and_then(|(value, sf)| scaled(i64::from(value), sf));
    MeterValues {
        import_wh: counter(MTR_TOT_WH_IMP),
        export_wh: counter(MTR_TOT_WH_EXP),
        power_w,
        counter_modulus_wh: wh_sf.and_then(|sf| scaled(1 << 32, sf)),
    }
}

/// Decodes the inverter block read from offset [`INV_W`] to [`INV_ST`] inclusive.
pub fn decode_inverter(words: &[u16]) -> InverterValues {
    let at = |offset: u16| word(words, offset - INV_W);
    let w_sf = sunssf(at(INV_W_SF));
    let wh_sf = sunssf(at(INV_WH_SF));
    InverterValues {
        power_w: int16(at(INV_W)).zip(w_sf).and_then(|(value, sf)| scaled(i64::from(value), sf)),
        energy_wh: acc32(at(INV_WH), at(INV_WH + 1)).zip(wh_sf).and_then(|(value, sf)| scaled(i64::from(value), sf)),
        operating_state: uint16(at(INV_ST)),
        counter_modulus_wh: wh_sf.and_then(|sf| scaled(1 << 32, sf)),
    }
}

/// Finds the marker and walks the model chain, then reads the common model.
pub async fn discover(client: &mut ModbusClient) -> Result<Device, SunSpecError> {
    let mut base = None;
    for candidate in BASE_ADDRESSES {
        match client.read(Function::Holding, candidate, 2).await {
            Ok(words) if words == MARKER => {
                base = Some(candidate);
                break;
            }
            Ok(_) | Err(ModbusError::Exception(_)) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    let base = base.ok_or(SunSpecError::NotFound)?;
    let mut models = Vec::new();
    let mut addr = u32::from(base) + 2;
    loop {
        if models.len() >= MODELS_MAX {
            return Err(SunSpecError::ChainTooLong);
        }
        let header_addr = u16::try_from(addr).map_err(|_| SunSpecError::ChainOverflow)?;
        let header = client.read(Function::Holding, header_addr, 2).await?;
        let (id, len) = (header[0], header[1]);
        if id == END_MODEL_ID {
            break;
        }
        let start = u16::try_from(addr + 2).map_err(|_| SunSpecError::ChainOverflow)?;
        models.push(ModelEntry { id, start, len });
        addr += 2 + u32::from(len);
    }
    let mut device = Device { base, models, manufacturer: None, model: None, version: None, serial: None };
    if let Some(common) = device.find(MODEL_COMMON..=MODEL_COMMON) {
        let words = client.read(Function::Holding, common.start, COMMON_SERIAL + 16).await?;
        let field = |offset: u16, len: u16| decode_string(&words[usize::from(offset)..usize::from(offset + len)]);
        device.manufacturer = field(COMMON_MANUFACTURER, 16);
        device.model = field(COMMON_MODEL, 16);
        device.version = field(COMMON_VERSION, 8);
        device.serial = field(COMMON_SERIAL, 16);
    }
    Ok(device)
}

/// Reads the meter model's power and counters with their scale factors in one request.
pub async fn read_meter(client: &mut ModbusClient, meter: ModelEntry) -> Result<MeterValues, ModbusError> {
    let words = client.read_block(Function::Holding, meter.start + MTR_W, MTR_TOT_WH_SF - MTR_W + 1).await?;
    Ok(decode_meter(&words))
}

/// Reads the inverter model's power, lifetime energy and state with their scale factors in one request.
pub async fn read_inverter(client: &mut ModbusClient, inverter: ModelEntry) -> Result<InverterValues, ModbusError> {
    let words = client.read_block(Function::Holding, inverter.start + INV_W, INV_ST - INV_W + 1).await?;
    Ok(decode_inverter(&words))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter_block() -> Vec<u16> {
        vec![NI_UINT16; usize::from(MTR_TOT_WH_SF - MTR_W + 1)]
    }

    #[test]
    fn not_implemented_values_are_missing_not_numbers() {
        assert_eq!(int16(0x8000), None);
        assert_eq!(uint16(0xFFFF), None);
        assert_eq!(sunssf(0x8000), None);
        assert_eq!(acc32(0, 0), None);
        assert_eq!(uint32(0xFFFF, 0xFFFF), None);
        assert_eq!(float32(0x7FC0, 0x0000), None);
        assert_eq!(decode_string(&[0, 0, 0]), None);
        let mut block = meter_block();
        block[usize::from(MTR_W - MTR_W)] = NI_INT16;
        block[usize::from(MTR_W_SF - MTR_W)] = 0;
        block[usize::from(MTR_TOT_WH_SF - MTR_W)] = NI_SUNSSF;
        let values = decode_meter(&block);
        assert_eq!(values, MeterValues::default());
    }

    #[test]
    fn scale_factors_apply_to_values_read_with_them() {
        let mut block = meter_block();
        block[usize::from(MTR_W - MTR_W)] = (-1234i16) as u16;
        block[usize::from(MTR_W_SF - MTR_W)] = 1;
        let imp = usize::from(MTR_TOT_WH_IMP - MTR_W);
        block[imp] = 0x0001;
        block[imp + 1] = 0x0000; // 65536
        let exp = usize::from(MTR_TOT_WH_EXP - MTR_W);
        block[exp] = 0;
        block[exp + 1] = 250;
        block[usize::from(MTR_TOT_WH_SF - MTR_W)] = (-1i16) as u16;
        let values = decode_meter(&block);
        assert_eq!(values.power_w, Some(-12_340));
        assert_eq!(values.import_wh, Some(6_553));
        assert_eq!(values.export_wh, Some(25));
        assert_eq!(values.counter_modulus_wh, Some((1i64 << 32) / 10));
        block[usize::from(MTR_TOT_WH_SF - MTR_W)] = 3;
        assert_eq!(decode_meter(&block).import_wh, Some(65_536_000));
    }

    #[test]
    fn out_of_range_scale_factors_are_refused() {
        assert_eq!(sunssf(11), None);
        assert_eq!(sunssf((-11i16) as u16), None);
        assert_eq!(scaled(5, -1), Some(0));
        assert_eq!(scaled(i64::MAX, 2), None);
    }

    #[test]
    fn strings_are_nul_padded_ascii() {
        assert_eq!(decode_string(&[0x4142, 0x4300, 0]), Some("ABC".to_owned()));
    }
}
