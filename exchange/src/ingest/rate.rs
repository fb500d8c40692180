//! The per-account command rate limit: a token bucket per account, in integer milli-tokens, on the
//! exchange's clock (never `Instant::now()`, so tests and the scaled demo clock decide the time).
//!
//! A household holds its own key, so it can sign valid commands as fast as it likes; without a
//! limit one account could fill its zone's book task and the group commit. A command the bucket
//! refuses is answered `rate_limited` by the verification stage, before the group commit: it costs
//! no write and never reaches the log.

/// Milli-tokens per token. Counting in thousandths makes the refill exact in integers: `per_s`
/// tokens per second is exactly `per_s` milli-tokens per millisecond.
const MILLI_PER_TOKEN: u64 = 1_000;

/// How fast one account may send commands: `per_s` sustained, up to `burst` at once. Both are at
/// least 1 (the service refuses to start otherwise; the bucket treats 0 as 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_s: u32,
    pub burst: u32,
}

impl RateLimit {
    fn capacity_milli(self) -> u64 {
        u64::from(self.burst.max(1)) * MILLI_PER_TOKEN
    }
    fn refill_milli_per_ms(self) -> u64 {
        u64::from(self.per_s.max(1))
    }
}

/// One account's bucket. It keeps what was spent and not yet refilled (its debt) rather than what
/// is left, so a new bucket ([`Default`]) is full whatever the limit, and a change of limit needs
/// no migration of state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Spent and not yet refilled, in milli-tokens; at most the capacity.
    debt_milli: u64,
    /// The latest time the bucket was refilled at; `None` before its first command.
    updated_ms: Option<i64>,
}

impl TokenBucket {
    /// Takes one token at `now_ms`, or answers how many milliseconds until one is there (at most
    /// `1000 / per_s`, so at most a second). A refused take spends nothing.
    pub fn take(&mut self, now_ms: i64, limit: RateLimit) -> Result<(), u64> {
        self.refill(now_ms, limit);
        let capacity = limit.capacity_milli();
        // Cannot overflow: the debt is at most the capacity, at most u32::MAX × 1000.
        let debt = self.debt_milli + MILLI_PER_TOKEN;
        if debt > capacity {
            return Err((debt - capacity).div_ceil(limit.refill_milli_per_ms()));
        }
        self.debt_milli = debt;
        assert!(self.debt_milli <= capacity, "the debt never exceeds the burst");
        Ok(())
    }

    /// Pays the debt down by the time since the last refill. A clock that went back refills
    /// nothing and leaves the refill time where it was, so no interval is ever counted twice; a
    /// huge gap saturates (the bucket is simply full).
    fn refill(&mut self, now_ms: i64, limit: RateLimit) {
        let Some(updated_ms) = self.updated_ms else {
            self.updated_ms = Some(now_ms);
            return;
        };
        let elapsed_ms = u64::try_from(now_ms.saturating_sub(updated_ms)).unwrap_or(0);
        let refill = elapsed_ms.saturating_mul(limit.refill_milli_per_ms());
        self.debt_milli = self.debt_milli.saturating_sub(refill).min(limit.capacity_milli());
        self.updated_ms = Some(updated_ms.max(now_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit { per_s: 20, burst: 100 };
    const T0_MS: i64 = 1_790_000_000_000;

    /// Takes at `now_ms` until refused; the number taken.
    fn drain(bucket: &mut TokenBucket, now_ms: i64, limit: RateLimit) -> u32 {
        let mut taken = 0;
        while bucket.take(now_ms, limit).is_ok() {
            taken += 1;
            assert!(taken <= limit.burst.max(1), "never more than the burst at one instant");
        }
        taken
    }

    #[test]
    fn a_new_bucket_allows_exactly_the_burst_at_once_then_says_when_to_retry() {
        let mut bucket = TokenBucket::default();
        assert_eq!(drain(&mut bucket, T0_MS, LIMIT), 100);
        // 20 per second: a token every 50 ms.
        assert_eq!(bucket.take(T0_MS, LIMIT), Err(50));
        assert_eq!(bucket.take(T0_MS + 49, LIMIT), Err(1), "a refused take spends nothing");
        assert_eq!(bucket.take(T0_MS + 50, LIMIT), Ok(()));
        assert_eq!(bucket.take(T0_MS + 50, LIMIT), Err(50));
    }

    #[test]
    fn an_emptied_bucket_refills_at_the_sustained_rate_and_never_beyond_the_burst() {
        let mut bucket = TokenBucket::default();
        drain(&mut bucket, T0_MS, LIMIT);
        assert_eq!(drain(&mut bucket, T0_MS + 1_000, LIMIT), 20, "one second refills 20");
        assert_eq!(drain(&mut bucket, T0_MS + 1_025, LIMIT), 0, "half a token is not a token");
        assert_eq!(drain(&mut bucket, T0_MS + 1_050, LIMIT), 1);
        assert_eq!(drain(&mut bucket, T0_MS + 60_000, LIMIT), 100, "a long pause refills only the burst");
        // A steady 20 per second is always allowed.
        for step in 1..=1_000 {
            assert_eq!(bucket.take(T0_MS + 60_000 + step * 50, LIMIT), Ok(()), "step {step}");
        }
    }

    #[test]
    fn huge_gaps_and_extreme_limits_do_not_overflow() {
        let extreme = RateLimit { per_s: u32::MAX, burst: u32::MAX };
        let mut bucket = TokenBucket::default();
        assert_eq!(bucket.take(i64::MIN, extreme), Ok(()));
        assert_eq!(bucket.take(i64::MAX, extreme), Ok(()), "a gap of the whole i64 range saturates");
        let mut bucket = TokenBucket::default();
        drain(&mut bucket, i64::MIN, LIMIT);
        assert_eq!(drain(&mut bucket, i64::MAX, LIMIT), 100, "full after the longest gap, not more");
        let tight = RateLimit { per_s: 1, burst: 1 };
        let mut bucket = TokenBucket::default();
        assert_eq!(bucket.take(T0_MS, tight), Ok(()));
        assert_eq!(bucket.take(T0_MS, tight), Err(1_000), "the longest wait is a second");
    }

    #[test]
    fn a_clock_that_goes_back_refills_nothing_and_counts_no_interval_twice() {
        let mut bucket = TokenBucket::default();
        drain(&mut bucket, T0_MS, LIMIT);
        assert_eq!(drain(&mut bucket, T0_MS - 10_000, LIMIT), 0, "going back refills nothing");
        assert_eq!(drain(&mut bucket, T0_MS + 1_000, LIMIT), 20, "the second after T0 counts once");
    }

    #[test]
    fn a_limit_of_zero_is_taken_as_one() {
        let zero = RateLimit { per_s: 0, burst: 0 };
        let mut bucket = TokenBucket::default();
        assert_eq!(drain(&mut bucket, T0_MS, zero), 1);
        assert_eq!(bucket.take(T0_MS, zero), Err(1_000));
    }
}
