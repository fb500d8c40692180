//! Units of energy, power, price, money and time. Every quantity is an integer newtype whose name
//! carries its unit; there are no floats anywhere in the wire contract or the ledger.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, AddAssign, Neg, Sub, SubAssign};

/// The largest magnitude an integer may have on the wire: 2^53 − 1, the largest integer every JSON
/// implementation (JavaScript's `Number.MAX_SAFE_INTEGER`) represents exactly.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Micro-units per whole unit of the settlement currency and of the GRID token (6 decimals).
pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// Watt-hours per kilowatt-hour: prices are quoted per kWh, quantities are traded in Wh.
pub const WH_PER_KWH: i64 = 1_000;

macro_rules! signed_quantity {
    ($(#[$doc:meta])* $name:ident, $suffix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl $name {
            pub const ZERO: Self = Self(0);
            /// The raw integer, in the unit of the type's name.
            pub const fn get(self) -> i64 {
                self.0
            }
            pub fn checked_add(self, other: Self) -> Option<Self> {
                self.0.checked_add(other.0).map(Self)
            }
            pub fn checked_sub(self, other: Self) -> Option<Self> {
                self.0.checked_sub(other.0).map(Self)
            }
            pub fn is_negative(self) -> bool {
                self.0 < 0
            }
            pub fn abs(self) -> Self {
                Self(self.0.abs())
            }
            pub fn min(self, other: Self) -> Self {
                Self(self.0.min(other.0))
            }
            pub fn max(self, other: Self) -> Self {
                Self(self.0.max(other.0))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} {}", self.0, $suffix)
            }
        }

        impl Add for $name {
            type Output = Self;
            fn add(self, other: Self) -> Self {
                Self(self.0 + other.0)
            }
        }
        impl Sub for $name {
            type Output = Self;
            fn sub(self, other: Self) -> Self {
                Self(self.0 - other.0)
            }
        }
        impl AddAssign for $name {
            fn add_assign(&mut self, other: Self) {
                self.0 += other.0;
            }
        }
        impl SubAssign for $name {
            fn sub_assign(&mut self, other: Self) {
                self.0 -= other.0;
            }
        }
        impl Neg for $name {
            type Output = Self;
            fn neg(self) -> Self {
                Self(-self.0)
            }
        }
        impl std::iter::Sum for $name {
            fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
                Self(iter.map(|v| v.0).sum())
            }
        }
    };
}

signed_quantity!(
    /// Energy in watt-hours. Counters on the wire are non-negative; differences and imbalances may be negative.
    Wh, "Wh"
);
signed_quantity!(
    /// Instantaneous power in watts.
    PowerW, "W"
);
signed_quantity!(
    /// Money in micro-units (10^-6) of the settlement currency.
    MicroMoney, "µ"
);
signed_quantity!(
    /// GRID reward tokens in micro-tokens (10^-6 GRID).
    MicroTokens, "µGRID"
);
signed_quantity!(
    /// A price: micro-units of the settlement currency per kWh.
    PricePerKwh, "µ/kWh"
);
signed_quantity!(
    /// A point in time: milliseconds since the Unix epoch (UTC).
    TimestampMs, "ms"
);

/// How a money amount that falls between two micro-units is rounded. Every caller states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// Towards negative infinity.
    Floor,
    /// Towards positive infinity.
    Ceil,
}

impl PricePerKwh {
    /// The value of `energy` at this price, `price × energy / 1000`, rounded as asked.
    /// Computed in 128 bits so it never overflows for any wire-valid price and quantity.
    pub fn value_of(self, energy: Wh, rounding: Rounding) -> MicroMoney {
        let numerator = i128::from(self.0) * i128::from(energy.0);
        let denominator = i128::from(WH_PER_KWH);
        let quotient = numerator.div_euclid(denominator);
        let remainder = numerator.rem_euclid(denominator);
        let rounded = match rounding {
            Rounding::Floor => quotient,
            Rounding::Ceil if remainder != 0 => quotient + 1,
            Rounding::Ceil => quotient,
        };
        // A wire-valid price and quantity are each below 2^53, so the value divided by 1000 fits i64
        // only when their product is below 2^63 * 1000; clamp instead of wrapping if it ever is not.
        MicroMoney(i64::try_from(rounded).unwrap_or(if rounded < 0 { i64::MIN } else { i64::MAX }))
    }
}

impl TimestampMs {
    pub fn saturating_sub_ms(self, other: TimestampMs) -> i64 {
        self.0.saturating_sub(other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_of_rounds_as_asked() {
        let price = PricePerKwh(250_001);
        assert_eq!(price.value_of(Wh(1), Rounding::Floor), MicroMoney(250));
        assert_eq!(price.value_of(Wh(1), Rounding::Ceil), MicroMoney(251));
        assert_eq!(PricePerKwh(250_000).value_of(Wh(4), Rounding::Ceil), MicroMoney(1000));
    }

    #[test]
    fn value_of_negative_energy_floors_towards_negative_infinity() {
        assert_eq!(PricePerKwh(1).value_of(Wh(-1), Rounding::Floor), MicroMoney(-1));
        assert_eq!(PricePerKwh(1).value_of(Wh(-1), Rounding::Ceil), MicroMoney(0));
    }
}
