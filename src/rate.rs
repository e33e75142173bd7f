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

    /// Takes one hold from the address's bucket, then from the customer's.
    pub fn check(&self, customer: &str, address: Option<IpAddr>) -> Result<(), Limited> {
        if let (Some(limiter), Some(address)) = (&self.per_address, address) {
            limiter.check_key(&address).map_err(|not_until| Limited {
                scope: Scope::Address,
                retry_after: not_until.wait_time_from(self.clock.now()),
            })?;
        }
        if let Some(limiter) = &self.per_customer {
            // Look up by `&str` would need an owned key anyway: governor keys are owned.
            limiter
                .check_key(&customer.to_owned())
                .map_err(|not_until| Limited {
                    scope: Scope::Customer,
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
