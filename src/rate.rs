//! Rate limits on `holdTickets`, per customer and per client address: hoarding bots are the
//! classic attack on a ticket sale. Each is a token bucket (GCRA, from `governor`): up to N
//! holds a minute, all of which may be spent at once; a refused call is told when it may retry.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Which limit refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Customer,
    Address,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Customer => "customer",
            Scope::Address => "address",
        }
    }
}

/// A refusal: which limit, and how long until the next call would pass.
#[derive(Clone, Copy, Debug)]
pub struct Limited {
    pub scope: Scope,
    pub retry_after: Duration,
}

pub struct HoldRateLimits {
    per_customer: Option<DefaultKeyedRateLimiter<String>>,
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
}

impl HoldRateLimits {
    /// Holds per minute per customer and per address; 0 turns a limit off.
    pub fn new(per_customer_per_minute: u32, per_address_per_minute: u32) -> HoldRateLimits {
        HoldRateLimits {
            per_customer: keyed(per_customer_per_minute),
            per_address: keyed(per_address_per_minute),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one hold from the customer's bucket, then from the address's: a customer over
    /// their own limit does not spend the allowance of everyone behind the same address.
    pub fn check(&self, customer: &str, address: Option<IpAddr>) -> Result<(), Limited> {
        if let Some(limiter) = &self.per_customer {
            // governor keys are owned: one small allocation per hold.
            limiter
                .check_key(&customer.to_owned())
                .map_err(|not_until| Limited {
                    scope: Scope::Customer,
                    retry_after: not_until.wait_time_from(self.clock.now()),
                })?;
        }
        if let (Some(limiter), Some(address)) = (&self.per_address, address) {
            limiter
                .check_key(&network_of(address))
                .map_err(|not_until| Limited {
                    scope: Scope::Address,
                    retry_after: not_until.wait_time_from(self.clock.now()),
                })?;
        }
        Ok(())
    }

    /// Forgets the buckets that are full again, so that memory follows the active callers.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.per_customer {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.per_address {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

fn keyed<K: Clone + std::hash::Hash + Eq>(per_minute: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)))
}

/// The key of an address: an IPv4 address itself, an IPv6 address's /64 (one client usually
/// owns a whole /64 and could rotate through it).
fn network_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1_u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_is_keyed_by_its_64_and_an_ipv4_one_by_its_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(network_of(a), network_of(b));
        assert_ne!(network_of(a), network_of(c));
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(network_of(v4), v4);
    }

    #[test]
    fn a_customer_over_their_limit_spends_nothing_of_their_address() {
        let limits = HoldRateLimits::new(1, 2);
        let address = Some("203.0.113.7".parse().unwrap());
        assert!(limits.check("bot", address).is_ok());
        for _ in 0..5 {
            let refused = limits.check("bot", address).unwrap_err();
            assert_eq!(refused.scope, Scope::Customer);
        }
        assert!(
            limits.check("someone", address).is_ok(),
            "the address still has one"
        );
        let refused = limits.check("third", address).unwrap_err();
        assert_eq!(refused.scope, Scope::Address);
    }
}
