//! SunSpec: discovery of the `SunS` marker, the model chain walk, and decoding of the common model (1),
//! the integer inverter (101–103) and meter (201–204) models with their scale factors, the float
//! inverter (111–113) and meter (211–214) models, and "not implemented" sentinels. Storage models
//! (124, 802) are found here and decoded in the `storage` module.
//!
//! Offsets below are relative to the first register after a model's ID and length (the SunSpec
//! information model tables). They are checked against the official model definitions in
//! github.com/sunspec/models (`json/model_1.json`, `model_101.json`–`model_103.json`,
//! `model_111.json`–`model_113.json`, `model_201.json`–`model_204.json`, `model_211.json`–
//! `model_214.json`, commit 7abdf898; their JSON offsets count ID and L, ours do not). A value and its
//! scale factor are always read in the same request so a device that changes its scale between two
//! requests cannot produce a wrong number.
//!
//! **Length checks.** Before any point of a model is read, the model's length register (L) must cover
//! it: a model too short for a point we read is [`SunSpecError::ShortModel`] (naming the model, its
//! length and the first point it lacks), never a read of the next model's registers as data.
//!
//! **Float models.** Values are IEEE-754 float32, big-endian, high word first; `0x7FC00000` (NaN) is
//! "not implemented". They become integer W and Wh by rounding to the nearest integer (halves away
//! from zero); any other NaN, an infinity, a negative energy counter or a magnitude above
//! [`FLOAT_INT_ABS_MAX`] is refused ([`SunSpecError::BadFloat`]). A float32 holds integers exactly only
//! up to 2^24, so a counter above 16 777 216 Wh advances in steps of 2 Wh or more: the device's
//! resolution, not ours.

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
/// Basic storage controls (decoded in `storage`, which re-exports it).
pub const MODEL_STORAGE_BASIC: u16 = 124;
/// Lithium-ion battery base model (decoded in `storage`, which re-exports it).
pub const MODEL_LITHIUM_ION: u16 = 802;
pub const COMMON_LEN: u16 = 66;
pub const COMMON_MANUFACTURER: u16 = 0; // 16 registers, string
pub const COMMON_MODEL: u16 = 16; // 16 registers
pub const COMMON_VERSION: u16 = 40; // 8 registers
pub const COMMON_SERIAL: u16 = 48; // 16 registers
pub const COMMON_DEVICE_ADDRESS: u16 = 64;

/// The integer inverter models (single, split and three phase).
pub const INVERTER_MODELS: std::ops::RangeInclusive<u16> = 101..=103;
/// The float inverter models (single, split and three phase).
pub const INVERTER_FLOAT_MODELS: std::ops::RangeInclusive<u16> = 111..=113;
/// The integer meter models (single phase, split phase, wye, delta).
pub const METER_MODELS: std::ops::RangeInclusive<u16> = 201..=204;
/// The float meter models (single phase, split phase, wye, delta).
pub const METER_FLOAT_MODELS: std::ops::RangeInclusive<u16> = 211..=214;

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

pub const INVERTER_FLOAT_LEN: u16 = 60;
/// Float inverter (111–113): W (float32) at 20–21, WH (float32) 30–31, St 46. One read of 20..=46.
pub const INVF_W: u16 = 20;
pub const INVF_WH: u16 = 30;
pub const INVF_ST: u16 = 46;

pub const METER_FLOAT_LEN: u16 = 124;
/// Float meter (211–214): W (float32) at 26–27, TotWhExp 58–59, TotWhImp 66–67. One read of 26..=67.
pub const MTRF_W: u16 = 26;
pub const MTRF_TOT_WH_EXP: u16 = 58;
pub const MTRF_TOT_WH_IMP: u16 = 66;

/// Largest magnitude a float value may have to become an integer W or Wh: 2^53, beyond which an f64
/// no longer holds every integer (and far beyond any household device: 9 PWh).
pub const FLOAT_INT_ABS_MAX: f64 = 9_007_199_254_740_992.0;

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
    #[error("no meter model (201-204 or 211-214) found")]
    NoMeter,
    #[error("model {id} has {len} registers, too short for point {point} (needs {needed})")]
    ShortModel { id: u16, len: u16, point: &'static str, needed: u16 },
    #[error("model {id} is not a model this reader decodes")]
    UnexpectedModel { id: u16 },
    #[error("model {id} point {point} holds {value} (bits {bits:#010x}): {refusal}")]
    BadFloat { id: u16, point: &'static str, value: f32, bits: u32, refusal: FloatRefusal },
    #[error(transparent)]
    Modbus(#[from] ModbusError),
}

/// Why a float32 value cannot become an integer W or Wh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FloatRefusal {
    #[error("not a number (and not the not-implemented pattern 0x7FC00000)")]
    NotANumber,
    #[error("infinite")]
    Infinite,
    #[error("a negative energy counter")]
    Negative,
    #[error("magnitude above 2^53")]
    OutOfRange,
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
    /// The first meter model in the chain, integer (201–204) or float (211–214).
    pub fn meter(&self) -> Option<ModelEntry> {
        self.models
            .iter()
            .copied()
            .find(|entry| METER_MODELS.contains(&entry.id) || METER_FLOAT_MODELS.contains(&entry.id))
    }
    /// The first inverter model in the chain, integer (101–103) or float (111–113).
    pub fn inverter(&self) -> Option<ModelEntry> {
        self.models
            .iter()
            .copied()
            .find(|entry| INVERTER_MODELS.contains(&entry.id) || INVERTER_FLOAT_MODELS.contains(&entry.id))
    }
    /// Basic storage controls (model 124), decoded by the `storage` module.
    pub fn storage_basic(&self) -> Option<ModelEntry> {
        let id = MODEL_STORAGE_BASIC;
        self.find(id..=id)
    }
    /// Lithium-ion battery base model (802), decoded by the `storage` module.
    pub fn lithium_ion(&self) -> Option<ModelEntry> {
        let id = MODEL_LITHIUM_ION;
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

/// A float32 (high word first) as an integer: `Ok(None)` for the not-implemented pattern, else the
/// value rounded to the nearest integer (halves away from zero). Other NaNs, infinities, magnitudes
/// above [`FLOAT_INT_ABS_MAX`] and, unless `negative_allowed`, values below zero are refused. A
/// negative value that rounds to zero (-0.3) is zero, not a refusal.
pub fn float32_to_int(high: u16, low: u16, negative_allowed: bool) -> Result<Option<i64>, FloatRefusal> {
    let bits = (u32::from(high) << 16) | u32::from(low);
    if bits == NI_FLOAT32 {
        return Ok(None);
    }
    let value = f64::from(f32::from_bits(bits));
    if value.is_nan() {
        return Err(FloatRefusal::NotANumber);
    }
    if value.is_infinite() {
        return Err(FloatRefusal::Infinite);
    }
    let rounded = value.round();
    if rounded.abs() > FLOAT_INT_ABS_MAX {
        return Err(FloatRefusal::OutOfRange);
    }
    if rounded < 0.0 && !negative_allowed {
        return Err(FloatRefusal::Negative);
    }
    // Exact: an integer of magnitude at most 2^53.
    Ok(Some(rounded as i64))
}

/// One point a reader needs from a model: its name, offset and size in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub name: &'static str,
    pub offset: u16,
    pub size: u16,
}

impl Point {
    const fn new(name: &'static str, offset: u16, size: u16) -> Self {
        Self { name, offset, size }
    }
    /// The length a model needs to hold this point.
    pub fn end(&self) -> u16 {
        self.offset + self.size
    }
}

/// Checks that `model`'s length covers every point in `points` (in any order): the error names the
/// point needing the shortest length among those not covered.
pub fn check_length(model: ModelEntry, points: &[Point]) -> Result<(), SunSpecError> {
    match points.iter().filter(|point| point.end() > model.len).min_by_key(|point| point.end()) {
        None => Ok(()),
        Some(point) => {
            Err(SunSpecError::ShortModel { id: model.id, len: model.len, point: point.name, needed: point.end() })
        }
    }
}

/// The common model's points the discovery reads.
pub const COMMON_POINTS: [Point; 4] = [
    Point::new("Mn", COMMON_MANUFACTURER, 16),
    Point::new("Md", COMMON_MODEL, 16),
    Point::new("Vr", COMMON_VERSION, 8),
    Point::new("SN", COMMON_SERIAL, 16),
];
/// The integer meter's points [`read_meter`] reads.
pub const METER_POINTS: [Point; 5] = [
    Point::new("W", MTR_W, 1),
    Point::new("W_SF", MTR_W_SF, 1),
    Point::new("TotWhExp", MTR_TOT_WH_EXP, 2),
    Point::new("TotWhImp", MTR_TOT_WH_IMP, 2),
    Point::new("TotWh_SF", MTR_TOT_WH_SF, 1),
];
/// The float meter's points [`read_meter`] reads.
pub const METER_FLOAT_POINTS: [Point; 3] = [
    Point::new("W", MTRF_W, 2),
    Point::new("TotWhExp", MTRF_TOT_WH_EXP, 2),
    Point::new("TotWhImp", MTRF_TOT_WH_IMP, 2),
];
/// The integer inverter's points [`read_inverter`] reads.
pub const INVERTER_POINTS: [Point; 5] = [
    Point::new("W", INV_W, 1),
    Point::new("W_SF", INV_W_SF, 1),
    Point::new("WH", INV_WH, 2),
    Point::new("WH_SF", INV_WH_SF, 1),
    Point::new("St", INV_ST, 1),
];
/// The float inverter's points [`read_inverter`] reads.
pub const INVERTER_FLOAT_POINTS: [Point; 3] =
    [Point::new("W", INVF_W, 2), Point::new("WH", INVF_WH, 2), Point::new("St", INVF_ST, 1)];

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

/// Decodes the float meter block read from offset [`MTRF_W`] to [`MTRF_TOT_WH_IMP`] + 1 inclusive, of
/// model `id` (for errors).
pub fn decode_meter_float(id: u16, words: &[u16]) -> Result<MeterValues, SunSpecError> {
    let at = |offset: u16| word(words, offset - MTRF_W);
    let value = |point: &'static str, offset: u16, negative_allowed: bool| {
        let (high, low) = (at(offset), at(offset + 1));
        float32_to_int(high, low, negative_allowed).map_err(|refusal| {
            let bits = (u32::from(high) << 16) | u32::from(low);
            SunSpecError::BadFloat { id, point, value: f32::from_bits(bits), bits, refusal }
        })
    };
    Ok(MeterValues {
        import_wh: value("TotWhImp", MTRF_TOT_WH_IMP, false)?,
        export_wh: value("TotWhExp", MTRF_TOT_WH_EXP, false)?,
        power_w: value("W", MTRF_W, true)?,
        counter_modulus_wh: None,
    })
}

/// Decodes the float inverter block read from offset [`INVF_W`] to [`INVF_ST`] inclusive, of model
/// `id` (for errors). Its power may be slightly negative (an inverter drawing its own standby power at
/// night); its lifetime energy may not.
pub fn decode_inverter_float(id: u16, words: &[u16]) -> Result<InverterValues, SunSpecError> {
    let at = |offset: u16| word(words, offset - INVF_W);
    let value = |point: &'static str, offset: u16, negative_allowed: bool| {
        let (high, low) = (at(offset), at(offset + 1));
        float32_to_int(high, low, negative_allowed).map_err(|refusal| {
            let bits = (u32::from(high) << 16) | u32::from(low);
            SunSpecError::BadFloat { id, point, value: f32::from_bits(bits), bits, refusal }
        })
    };
    Ok(InverterValues {
        power_w: value("W", INVF_W, true)?,
        energy_wh: value("WH", INVF_WH, false)?,
        operating_state: uint16(at(INVF_ST)),
        counter_modulus_wh: None,
    })
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
        check_length(common, &COMMON_POINTS)?;
        let words = client.read(Function::Holding, common.start, COMMON_SERIAL + 16).await?;
        let field = |offset: u16, len: u16| decode_string(&words[usize::from(offset)..usize::from(offset + len)]);
        device.manufacturer = field(COMMON_MANUFACTURER, 16);
        device.model = field(COMMON_MODEL, 16);
        device.version = field(COMMON_VERSION, 8);
        device.serial = field(COMMON_SERIAL, 16);
    }
    Ok(device)
}

/// Reads the meter model's power and counters (with their scale factors) in one request, after
/// checking the model is long enough for them; integer (201–204) or float (211–214).
pub async fn read_meter(client: &mut ModbusClient, meter: ModelEntry) -> Result<MeterValues, SunSpecError> {
    if METER_MODELS.contains(&meter.id) {
        check_length(meter, &METER_POINTS)?;
        let words = client.read_block(Function::Holding, meter.start + MTR_W, MTR_TOT_WH_SF - MTR_W + 1).await?;
        Ok(decode_meter(&words))
    } else if METER_FLOAT_MODELS.contains(&meter.id) {
        check_length(meter, &METER_FLOAT_POINTS)?;
        let words = client.read_block(Function::Holding, meter.start + MTRF_W, MTRF_TOT_WH_IMP + 2 - MTRF_W).await?;
        decode_meter_float(meter.id, &words)
    } else {
        Err(SunSpecError::UnexpectedModel { id: meter.id })
    }
}

/// Reads the inverter model's power, lifetime energy and state (with their scale factors) in one
/// request, after checking the model is long enough for them; integer (101–103) or float (111–113).
pub async fn read_inverter(client: &mut ModbusClient, inverter: ModelEntry) -> Result<InverterValues, SunSpecError> {
    if INVERTER_MODELS.contains(&inverter.id) {
        check_length(inverter, &INVERTER_POINTS)?;
        let words = client.read_block(Function::Holding, inverter.start + INV_W, INV_ST - INV_W + 1).await?;
        Ok(decode_inverter(&words))
    } else if INVERTER_FLOAT_MODELS.contains(&inverter.id) {
        check_length(inverter, &INVERTER_FLOAT_POINTS)?;
        let words = client.read_block(Function::Holding, inverter.start + INVF_W, INVF_ST - INVF_W + 1).await?;
        decode_inverter_float(inverter.id, &words)
    } else {
        Err(SunSpecError::UnexpectedModel { id: inverter.id })
    }
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

    fn halves(value: f32) -> (u16, u16) {
        let bits = value.to_bits();
        ((bits >> 16) as u16, bits as u16)
    }

    #[test]
    fn floats_round_to_the_nearest_integer_and_refuse_what_is_not_a_count() {
        let int = |value: f32, negative_allowed| {
            let (high, low) = halves(value);
            float32_to_int(high, low, negative_allowed)
        };
        assert_eq!(float32_to_int(0x7FC0, 0x0000, true), Ok(None), "not implemented");
        assert_eq!(float32_to_int(0x7FC0, 0x0001, true), Err(FloatRefusal::NotANumber));
        assert_eq!(float32_to_int(0xFFC0, 0x0000, true), Err(FloatRefusal::NotANumber));
        assert_eq!(int(f32::INFINITY, true), Err(FloatRefusal::Infinite));
        assert_eq!(int(f32::NEG_INFINITY, true), Err(FloatRefusal::Infinite));
        assert_eq!(int(1234.5, false), Ok(Some(1235)), "halves away from zero");
        assert_eq!(int(1234.49, false), Ok(Some(1234)));
        assert_eq!(int(-1234.5, true), Ok(Some(-1235)));
        assert_eq!(int(-2.0, false), Err(FloatRefusal::Negative));
        assert_eq!(int(-0.3, false), Ok(Some(0)), "rounds to zero");
        assert_eq!(int(16_777_217.0, false), Ok(Some(16_777_216)), "float32 resolution above 2^24");
        assert_eq!(int(9.0e15, false), Ok(Some(8_999_999_815_811_072)));
        assert_eq!(int(1.0e16, false), Err(FloatRefusal::OutOfRange));
        assert_eq!(int(f32::MAX, true), Err(FloatRefusal::OutOfRange));
    }

    #[test]
    fn a_model_shorter_than_a_point_names_the_first_missing_point() {
        let model = |len| ModelEntry { id: 203, start: 40_070, len };
        assert!(check_length(model(METER_LEN), &METER_POINTS).is_ok());
        assert!(check_length(model(53), &METER_POINTS).is_ok(), "exactly up to TotWh_SF");
        assert!(matches!(
            check_length(model(40), &METER_POINTS),
            Err(SunSpecError::ShortModel { id: 203, len: 40, point: "TotWhImp", needed: 46 })
        ));
        assert!(matches!(
            check_length(model(37), &METER_POINTS),
            Err(SunSpecError::ShortModel { point: "TotWhExp", needed: 38, .. })
        ));
    }

    #[test]
    fn float_meter_blocks_decode_and_name_the_refused_point() {
        let mut block = vec![NI_UINT16; usize::from(MTRF_TOT_WH_IMP + 2 - MTRF_W)];
        fn put(block: &mut [u16], offset: u16, value: f32) {
            let (high, low) = halves(value);
            let at = usize::from(offset - MTRF_W);
            block[at] = high;
            block[at + 1] = low;
        }
        put(&mut block, MTRF_W, -1500.4);
        put(&mut block, MTRF_TOT_WH_EXP, 2_000_000.0);
        put(&mut block, MTRF_TOT_WH_IMP, 123_456.5);
        let values = decode_meter_float(213, &block).expect("decodes");
        assert_eq!(values.power_w, Some(-1_500));
        assert_eq!(values.export_wh, Some(2_000_000));
        assert_eq!(values.import_wh, Some(123_457));
        assert_eq!(values.counter_modulus_wh, None, "float counters do not wrap");
        put(&mut block, MTRF_TOT_WH_IMP, -5.0);
        assert!(matches!(
            decode_meter_float(213, &block),
            Err(SunSpecError::BadFloat { id: 213, point: "TotWhImp", refusal: FloatRefusal::Negative, .. })
        ));
    }

    #[test]
    fn a_float_inverter_at_night_may_draw_power_but_its_energy_never_falls_below_zero() {
        let mut block = vec![NI_UINT16; usize::from(INVF_ST - INVF_W + 1)];
        let put = |block: &mut Vec<u16>, offset: u16, value: f32| {
            let (high, low) = halves(value);
            let at = usize::from(offset - INVF_W);
            block[at] = high;
            block[at + 1] = low;
        };
        put(&mut block, INVF_W, -3.2);
        put(&mut block, INVF_WH, 5_000_000.0);
        block[usize::from(INVF_ST - INVF_W)] = 2;
        let values = decode_inverter_float(113, &block).expect("decodes");
        assert_eq!((values.power_w, values.energy_wh, values.operating_state), (Some(-3), Some(5_000_000), Some(2)));
        put(&mut block, INVF_WH, -1.0);
        assert!(matches!(
            decode_inverter_float(113, &block),
            Err(SunSpecError::BadFloat { id: 113, point: "WH", refusal: FloatRefusal::Negative, .. })
        ));
    }

    #[test]
    fn strings_are_nul_padded_ascii() {
        assert_eq!(decode_string(&[0x4142, 0x4300, 0]), Some("ABC".to_owned()));
    }
}
