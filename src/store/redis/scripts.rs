//! The Lua scripts of the Redis flow and the parsing of their replies. Each script is the
//! shared library `lua/lib.lua` followed by its own body; `redis::Script` runs it by EVALSHA and
//! loads it again by itself after a Redis restart.

use redis::{Script, Value};

use crate::domain::{
    CustomerId, EventId, Hold, HoldId, HoldItem, HoldStatus, Millis, TicketTypeId,
};
use crate::store::{StoreError, StoreResult};

pub struct Scripts {
    pub hold: Script,
    pub change: Script,
    pub sweep: Script,
    pub stock: Script,
    pub load: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        let with_lib =
            |body: &str| Script::new(&format!("{}\n{body}", include_str!("lua/lib.lua")));
        Scripts {
            hold: with_lib(include_str!("lua/hold.lua")),
            change: with_lib(include_str!("lua/change.lua")),
            sweep: with_lib(include_str!("lua/sweep.lua")),
            stock: with_lib(include_str!("lua/stock.lua")),
            load: with_lib(include_str!("lua/load.lua")),
        }
    }
}

/// Key names. Every key of an event carries the hash tag `{event-id}`, so an event lives in one
/// Redis Cluster slot and its scripts can touch all its keys.
#[derive(Clone, Debug)]
pub struct Keys {
    namespace: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Keys {
        Keys {
            namespace: namespace.to_owned(),
        }
    }

    /// The prefix of the keys of an event: `<ns>:{<event>}:`.
    pub fn event(&self, event: EventId) -> String {
        format!("{}:{{{event}}}:", self.namespace)
    }

    pub fn hold(&self, event: EventId, hold: HoldId) -> String {
        format!("{}hold:{hold}", self.event(event))
    }

    /// The event's expiry index (a sorted set of active holds by `expires_at`).
    pub fn expiry(&self, event: EventId) -> String {
        format!("{}expiry", self.event(event))
    }

    /// The event's holds being checked out, by when they were pinned.
    pub fn pinned(&self, event: EventId) -> String {
        format!("{}pinned", self.event(event))
    }

    /// A ticket type's counters.
    pub fn ticket_type(&self, event: EventId, id: TicketTypeId) -> String {
        format!("{}tt:{id}", self.event(event))
    }

    pub fn loaded(&self, event: EventId) -> String {
        format!("{}loaded", self.event(event))
    }

    pub fn log(&self, event: EventId) -> String {
        format!("{}log", self.event(event))
    }

    /// Which event a hold belongs to (hold ids alone do not say).
    pub fn hold_event(&self, hold: HoldId) -> String {
        format!("{}:hold:{{{hold}}}", self.namespace)
    }

    /// A customer's idempotency key across events (the one inside the event's slot only sees
    /// its own event): it names the event whose hold the key belongs to.
    pub fn idempotency(&self, customer: &str, key: &str) -> String {
        format!(
            "{}:idem:{{{}:{customer}:{key}}}",
            self.namespace,
            customer.len()
        )
    }

    /// The event and hold of a shadow key (`<ns>:{<event>}:ttl:<hold>`), if it is one of ours.
    pub fn parse_shadow(&self, key: &str) -> Option<(EventId, HoldId)> {
        let rest = key.strip_prefix(&self.namespace)?.strip_prefix(":{")?;
        let (event, rest) = rest.split_once("}:ttl:")?;
        Some((event.parse().ok()?, rest.parse().ok()?))
    }
}

/// A reply as a list of strings (nested lists are skipped).
pub fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().filter_map(string).collect(),
        _ => Vec::new(),
    }
}

pub fn string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

pub fn array(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) => items,
        _ => &[],
    }
}

/// A hold from the alternating field names and values of its hash. A PINNED hold (being
/// checked out) is still ACTIVE for everybody else; the flag says whether it is pinned.
pub fn hold_of(fields: &[String]) -> StoreResult<(Hold, bool)> {
    let get = |name: &str| field(fields, name);
    let bad = |what: &str| StoreError::Invariant(format!("hold in Redis without a valid {what}"));
    let millis = |name: &str| get(name).and_then(|v| v.parse::<i64>().ok()).map(Millis);
    let status_text = get("status").ok_or_else(|| bad("status"))?;
    let pinned = status_text == "PINNED";
    let status = if pinned {
        HoldStatus::Active
    } else {
        HoldStatus::parse(status_text).ok_or_else(|| bad("status"))?
    };
    Ok((
        Hold {
            id: get("id")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("id"))?,
            event_id: get("event")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("event"))?,
            customer_id: CustomerId::from_stored(get("customer").unwrap_or_default().to_owned()),
            status,
            items: items_of(get("items").unwrap_or_default())?,
            created_at: millis("created").ok_or_else(|| bad("created"))?,
            expires_at: millis("expires").ok_or_else(|| bad("expires"))?,
            ended_at: millis("ended"),
            idempotency_key: get("idem").filter(|k| !k.is_empty()).map(str::to_owned),
        },
        pinned,
    ))
}

/// The stamp of a hold's last pin from the fields of its hash (see `change.lua`).
pub fn pin_of(fields: &[String]) -> Option<String> {
    field(fields, "pinned").map(str::to_owned)
}

/// The revision of a hold from the fields of its hash (0 if it has none).
pub fn revision_of(fields: &[String]) -> i64 {
    field(fields, "rev")
        .and_then(|rev| rev.parse().ok())
        .unwrap_or(0)
}

/// The value of the field `name` among the alternating names and values of a hash.
fn field<'a>(fields: &'a [String], name: &str) -> Option<&'a str> {
    fields
        .chunks(2)
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair.get(1))
        .map(String::as_str)
}

/// `"type:quantity,type:quantity"`, the items as scripts store them.
pub fn items_text(items: &[HoldItem]) -> String {
    items
        .iter()
        .map(|i| format!("{}:{}", i.ticket_type_id, i.quantity))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn items_of(text: &str) -> StoreResult<Vec<HoldItem>> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (id, quantity) = part.split_once(':').unwrap_or_default();
            match (id.parse::<TicketTypeId>(), quantity.parse::<u32>()) {
                (Ok(ticket_type_id), Ok(quantity)) => Ok(HoldItem {
                    ticket_type_id,
                    quantity,
                }),
                _ => Err(StoreError::Invariant(format!(
                    "bad hold item {part:?} in Redis"
                ))),
            }
        })
        .collect()
}
