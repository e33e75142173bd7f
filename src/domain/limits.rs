//! Every limit of the service, in one struct passed explicitly; units are in the names.

/// The limits that the domain enforces. The server fills it from its configuration; tests build
/// it with `Limits::default()` and change what they need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// TTL of a hold when the client sends none.
    pub hold_ttl_secs_default: u32,
    /// Largest TTL a client may ask for, at hold or extend time.
    pub hold_ttl_secs_max: u32,
    /// Longest a hold may live from its creation, however often it is extended.
    pub hold_lifetime_secs_max: u32,
    /// Items (lines) in one hold.
    pub items_per_hold_max: u32,
    /// Tickets of one type in one hold.
    pub quantity_max: u32,
    /// Tickets of one ticket type.
    pub capacity_max: u32,
    pub price_cents_max: i64,
    pub customer_id_len_max: u32,
    pub idempotency_key_len_max: u32,
    /// Names, payment references and other free text.
    pub text_len_max: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            hold_ttl_secs_default: 900,
            hold_ttl_secs_max: 3600,
            hold_lifetime_secs_max: 3600,
            items_per_hold_max: 20,
            quantity_max: 100,
            capacity_max: 10_000_000,
            price_cents_max: 1_000_000_000,
            customer_id_len_max: 128,
            idempotency_key_len_max: 128,
            text_len_max: 200,
        }
    }
}

impl Limits {
    /// Checks that the limits make sense together; the server refuses to start otherwise.
    pub fn validate(&self) -> Result<(), String> {
        if self.hold_ttl_secs_max == 0 {
            return Err("the largest hold TTL must be at least 1 second".into());
        }
        if !(1..=self.hold_ttl_secs_max).contains(&self.hold_ttl_secs_default) {
            return Err(format!(
                "the default hold TTL ({} s) must be between 1 and the largest TTL ({} s)",
                self.hold_ttl_secs_default, self.hold_ttl_secs_max
            ));
        }
        if self.hold_lifetime_secs_max < self.hold_ttl_secs_max {
            return Err(format!(
                "the longest hold lifetime ({} s) must be at least the largest TTL ({} s)",
                self.hold_lifetime_secs_max, self.hold_ttl_secs_max
            ));
        }
        Ok(())
    }
}
