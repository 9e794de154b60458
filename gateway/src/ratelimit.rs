//! Rate limits of `POST /register` (redeem): per source address and per `code_id`,
//! token buckets from the policy (`rate_limits.redeem_per_source`, `redeem_per_code`),
//! with the `governor` crate (GCRA, keyed, in memory).
//!
//! **Scope: per gateway process.** With N gateways behind a load balancer a client can
//! get up to N× the configured rate. That is acceptable here because the limit is a
//! brake, not the security boundary: a code's secret part has 90 bits, so even N× the
//! per-code rate (5/min) leaves online guessing hopeless, and every failed attempt is
//! audited. Making them global would take a shared counter (a Postgres table keyed by
//! `code_id` with `UPDATE … RETURNING`, or Redis), at the cost of a round trip on every
//! attempt; sticky load balancing by source address gives the per-source limit most of
//! that for free.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use alga_policies::{Quota, RateLimits};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, RateLimiter};

/// The two keyed limiters.
#[derive(Debug)]
pub struct RedeemLimits {
    per_source: DefaultKeyedRateLimiter<IpAddr>,
    per_code: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

fn quota(q: Quota) -> governor::Quota {
    let per_minute = NonZeroU32::new(q.per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(q.burst).unwrap_or(NonZeroU32::MIN);
    governor::Quota::per_minute(per_minute).allow_burst(burst)
}

impl RedeemLimits {
    /// Limiters for the policy's quotas.
    pub fn new(limits: &RateLimits) -> RedeemLimits {
        RedeemLimits {
            per_source: RateLimiter::keyed(quota(limits.redeem_per_source)),
            per_code: RateLimiter::keyed(quota(limits.redeem_per_code)),
            clock: DefaultClock::default(),
        }
    }

    /// One attempt from `source`; `Err(wait)` when over the limit.
    pub fn check_source(&self, source: IpAddr) -> Result<(), Duration> {
        self.per_source
            .check_key(&source)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// One attempt on `code_id`; `Err(wait)` when over the limit.
    pub fn check_code(&self, code_id: &str) -> Result<(), Duration> {
        self.per_code
            .check_key(&code_id.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets keys whose buckets are full again (bounded memory); called periodically.
    pub fn sweep(&self) {
        self.per_source.retain_recent();
        self.per_code.retain_recent();
        self.per_source.shrink_to_fit();
        self.per_code.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refused_with_wait() {
        let l = RedeemLimits::new(&RateLimits {
            redeem_per_source: Quota {
                per_minute: 10,
                burst: 2,
            },
            redeem_per_code: Quota {
                per_minute: 5,
                burst: 1,
            },
        });
        let ip: IpAddr = [127, 0, 0, 1].into();
        assert!(l.check_source(ip).is_ok());
        assert!(l.check_source(ip).is_ok());
        let wait = l.check_source(ip).expect_err("third is over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(6),
            "{wait:?}"
        );
        assert!(l.check_code("AAAAAAAAAA").is_ok());
        assert!(l.check_code("AAAAAAAAAA").is_err());
        assert!(l.check_code("BBBBBBBBBB").is_ok());
    }
}
