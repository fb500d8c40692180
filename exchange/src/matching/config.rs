//! The rules of one book: tick size, quantity limits, price band and the per-account order limit.

use protocol::units::MAX_SAFE_INTEGER;
use protocol::{PricePerKwh, Wh};

/// Most price levels one book may have, `(price_max - price_min) / tick + 1`. Each level costs 16 bytes
/// per side (a `PriceLevel`, asserted in `level.rs`) and one bit of the occupancy bitmap, so this caps a
/// book's level arrays at about 2 MiB; the default band (feed-in tariff to retail price, a few hundred
/// thousand µ/kWh) with a 100 µ/kWh tick needs a few thousand.
pub const PRICE_LEVELS_MAX: u64 = 1 << 16;

/// Most open orders one account may rest in one book; a household has no reason for more than a few,
/// and the limit bounds the memory one key can make a book hold.
pub const OPEN_ORDERS_PER_ACCOUNT_LIMIT: usize = 1_000;

/// The rules of one book (one zone and delivery slot). Prices must lie on the tick grid of the band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookConfig {
    /// Every price is a multiple of this.
    pub tick: PricePerKwh,
    /// Smallest quantity of a new order or replace.
    pub qty_min: Wh,
    /// Largest quantity of a new order or replace.
    pub qty_max: Wh,
    /// Lowest accepted price (inclusive; on the tick grid).
    pub price_min: PricePerKwh,
    /// Highest accepted price (inclusive; on the tick grid).
    pub price_max: PricePerKwh,
    /// Most orders one account may have resting in this book at once.
    pub open_orders_per_account_max: usize,
}

/// Why a [`BookConfig`] cannot make a book.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookConfigError {
    #[error("the tick must be positive")]
    TickNotPositive,
    #[error("the price band must be positive, on the tick grid and not empty")]
    BadPriceBand,
    #[error("the price band has more than {PRICE_LEVELS_MAX} ticks")]
    TooManyPriceLevels,
    #[error("the quantity limits must satisfy 0 < qty_min <= qty_max <= 2^53 - 1")]
    BadQuantityLimits,
    #[error("open_orders_per_account_max must be between 1 and {OPEN_ORDERS_PER_ACCOUNT_LIMIT}")]
    BadOpenOrderLimit,
}

impl BookConfig {
    /// Checks that a book can be built from this configuration.
    pub fn validate(&self) -> Result<(), BookConfigError> {
        let tick = self.tick.get();
        if tick <= 0 {
            return Err(BookConfigError::TickNotPositive);
        }
        let (min, max) = (self.price_min.get(), self.price_max.get());
        let on_grid = min % tick == 0 && max % tick == 0;
        if min <= 0 || max < min || max > MAX_SAFE_INTEGER || !on_grid {
            return Err(BookConfigError::BadPriceBand);
        }
        // `max >= min` and both are below 2^53, so this neither overflows nor goes negative.
        if ((max - min) / tick) as u64 + 1 > PRICE_LEVELS_MAX {
            return Err(BookConfigError::TooManyPriceLevels);
        }
        let (qty_min, qty_max) = (self.qty_min.get(), self.qty_max.get());
        if qty_min <= 0 || qty_max < qty_min || qty_max > MAX_SAFE_INTEGER {
            return Err(BookConfigError::BadQuantityLimits);
        }
        if !(1..=OPEN_ORDERS_PER_ACCOUNT_LIMIT).contains(&self.open_orders_per_account_max) {
            return Err(BookConfigError::BadOpenOrderLimit);
        }
        Ok(())
    }

    /// How many price levels each side of the book has.
    pub fn price_levels(&self) -> usize {
        ((self.price_max.get() - self.price_min.get()) / self.tick.get()) as usize + 1
    }
}
