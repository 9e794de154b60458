//! Rate limits of `POST /register` (redeem): per source and per `code_id`, token
//! buckets from the policy (`rate_limits.redeem_per_source`, `redeem_per_code`), with
//! the `governor` crate (GCRA, keyed, in memory).
//!
//! **Per source** ([`RedeemLimits::check_source`]) is charged by every attempt, before
//! anything else is looked at. A source is an IPv4 address, or an IPv6 **/64**: one
//! customer LAN, the smallest block a provider assigns, so a client cannot rotate
//! through the 2^64 addresses of its own /64 to get a fresh bucket per request
//! ([`source_key`]; an IPv4-mapped IPv6 address counts as its IPv4 address).
//!
//! **Per code** ([`RedeemLimits::code_failure`]) is charged only by an attempt whose
//! code *failed* verification (an unknown `code_id` and a wrong secret alike), after the
//! issuer answered. A code that verifies is never refused by it: guesses at a code id
//! cannot lock its owner out. Past the budget a failed attempt is answered
//! `rate_limited` instead of `code_invalid`, as before. What bounds the number of
//! verifications (issuer HMACs) is the per-source limit: the per-code limit never did
//! for random code ids, which each start with a full bucket.
//!
//! **Scope: per gateway process.** With N gateways behind a load balancer a client can
//! get up to N× the configured rate. That is acceptable here because the limit is a
//! brake, not the security boundary: a code's secret part has 90 bits, so even N× the
//! rates leaves online guessing hopeless, and every verified attempt is audited. Making
//! them global would take a shared counter (a Postgres table keyed by `code_id` with
//! `UPDATE … RETURNING`, or Redis), at the cost of a round trip on every attempt; sticky
//! load balancing by source address gives the per-source limit most of that for free.

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
    /// Failed verifications per code id.
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

    /// One attempt from `source` (its [`source_key`]); `Err(wait)` when over the limit.
    pub fn check_source(&self, source: IpAddr) -> Result<(), Duration> {
        self.per_source
            .check_key(&source_key(source))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// One failed verification of a code presented with `code_id`; `Err(wait)` when
    /// the code id's budget of failures is spent. Call it only after the issuer said
    /// the code is not valid, never before verification.
    pub fn code_failure(&self, code_id: &str) -> Result<(), Duration> {
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

/// What the per-source limit counts as one source: an IPv4 address, or the /64 of an
/// IPv6 address (the rest zeroed). IPv4-mapped IPv6 addresses are their IPv4 address.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
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
        assert!(l.code_failure("AAAAAAAAAA").is_ok());
        assert!(l.code_failure("AAAAAAAAAA").is_err());
        assert!(l.code_failure("BBBBBBBBBB").is_ok());
    }

    fn limits(burst: u32) -> RedeemLimits {
        let q = Quota {
            per_minute: 1,
            burst,
        };
        RedeemLimits::new(&RateLimits {
            redeem_per_source: q,
            redeem_per_code: q,
        })
    }

    /// Finding 14: a client that rotates through the addresses of its /64 shares one
    /// bucket; another /64 has its own; IPv4 stays per address.
    #[test]
    fn ipv6_sources_are_limited_per_64_ipv4_per_address() {
        let l = limits(3);
        let in_64 = |host: u64| {
            IpAddr::V6(std::net::Ipv6Addr::from(
                (0x2001_0db8_0001_0002u128 << 64) | u128::from(host),
            ))
        };
        for host in [1u64, 2, 0xffff_ffff_0000_0001] {
            assert!(l.check_source(in_64(host)).is_ok(), "{host:x} within burst");
        }
        for host in [4u64, 0xdead_beef, u64::MAX] {
            assert!(
                l.check_source(in_64(host)).is_err(),
                "{host:x}: a new address in the same /64 gets no fresh bucket"
            );
        }
        let next_64: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert!(l.check_source(next_64).is_ok(), "another /64");

        let l = limits(1);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!(l.check_source(a).is_ok());
        assert!(l.check_source(a).is_err());
        assert!(l.check_source(b).is_ok(), "IPv4: per address");
        let mapped: IpAddr = "::ffff:192.0.2.2".parse().expect("ip");
        assert!(
            l.check_source(mapped).is_err(),
            "an IPv4-mapped address is its IPv4 address"
        );
    }

    #[test]
    fn source_keys() {
        let k = |s: &str| source_key(s.parse().expect("ip")).to_string();
        assert_eq!(k("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(k("192.0.2.77"), "192.0.2.77");
        assert_eq!(k("::ffff:192.0.2.77"), "192.0.2.77");
        assert_eq!(k("::1"), "::");
    }
}
