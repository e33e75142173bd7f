//! Bad input over HTTP: every malformed, out-of-range or unknown value gets a GraphQL error with
//! the exact `extensions.code` (`INVALID_INPUT`, `NOT_FOUND`), never a 5xx or `INTERNAL`, and
//! changes nothing: no event, ticket type or hold appears, and the stock and the one existing
//! hold stay exactly as they were. Unknown ids in single-object queries read as null, a body
//! that is not a GraphQL request is a 4xx, and queries deeper than the limit are refused while
//! GraphiQL's own introspection query still runs.

use serde_json::{Value, json};
use uuid::Uuid;

use tickethold::auth::Role;

use crate::support::client::Client;
use crate::support::{self, TestDb, TestServer};

/// A server with two events, each with one ticket type, and one hold (with an idempotency key)
/// on the first: the world that no bad request may change.
struct World {
    server: TestServer,
    /// The buyer `CUSTOMER`, who holds.
    buyer: Client,
    event_id: String,
    other_event_id: String,
    ticket_type_id: String,
    other_ticket_type_id: String,
    hold_id: String,
}

const IDEMPOTENCY_KEY: &str = "key-1";
const CUSTOMER: &str = "c-1";

impl World {
    async fn new(server: TestServer) -> World {
        let event_id = server.create_event("Main Stage").await;
        let other_event_id = server.create_event("Side Stage").await;
        let ticket_type_id = server.create_ticket_type(&event_id, 10, None).await;
        let other_ticket_type_id = server.create_ticket_type(&other_event_id, 5, None).await;
        let buyer = server.as_buyer(CUSTOMER);
        let r = buyer
            .gql(
                HOLD,
                hold_vars(&event_id, &[(&ticket_type_id, 1)], Some(IDEMPOTENCY_KEY)),
            )
            .await;
        let hold_id = support::data(&r)["holdTickets"]["id"]
            .as_str()
            .expect("hold id")
            .to_owned();
        World {
            server,
            buyer,
            event_id,
            other_event_id,
            ticket_type_id,
            other_ticket_type_id,
            hold_id,
        }
    }

    /// Everything a bad request could have changed: the events, their ticket types and stock,
    /// and the existing hold.
    async fn snapshot(&self) -> Value {
        let r = self
            .server
            .gql(
                "query($h:ID!){events{id name ticketTypes{id name priceCents capacity \
                 maxPerCustomer availability{capacity sold held available}}} \
                 hold(id:$h){status expiresAt endedAt items{ticketTypeId quantity}}}",
                json!({"h": self.hold_id}),
            )
            .await;
        support::data(&r).clone()
    }

    /// Sends one bad request and checks that it fails with `code` and changes nothing.
    async fn check(&self, case: &Case) {
        let before = self.snapshot().await;
        let client = match (&case.subject, case.caller) {
            (Some(subject), role) => self.server.as_role(role, subject),
            (None, Role::Buyer) => self.buyer.clone(),
            (None, _) => (*self.server).clone(),
        };
        let response = client.gql(&case.query, case.variables.clone()).await;
        assert_eq!(
            support::error_code(&response).as_deref(),
            Some(case.code),
            "{}: expected {} in {response}",
            case.label,
            case.code
        );
        // Nothing was answered: no data at all, or null in every field.
        let answered = match &response["data"] {
            Value::Null => false,
            Value::Object(fields) => fields.values().any(|v| !v.is_null()),
            other => panic!("{}: unexpected data {other}", case.label),
        };
        assert!(
            !answered,
            "{}: data next to the error: {response}",
            case.label
        );
        assert_eq!(
            self.snapshot().await,
            before,
            "{}: the world changed",
            case.label
        );
    }
}

/// One bad request, who sends it (the buyer `CUSTOMER` or an admin, or this role with a token
/// for `subject`), and the code it must get.
struct Case {
    caller: Role,
    subject: Option<String>,
    label: &'static str,
    query: String,
    variables: Value,
    code: &'static str,
}

fn case(
    label: &'static str,
    query: impl Into<String>,
    variables: Value,
    code: &'static str,
) -> Case {
    Case {
        caller: Role::Buyer,
        subject: None,
        label,
        query: query.into(),
        variables,
        code,
    }
}

/// The same case, sent by an admin (the catalog's cases).
fn by_admin(case: Case) -> Case {
    Case {
        caller: Role::Admin,
        ..case
    }
}

const INVALID: &str = "INVALID_INPUT";
const NOT_FOUND: &str = "NOT_FOUND";

const HOLD: &str = "mutation($e:ID!,$items:[HoldItemInput!]!,$ttl:Int,$key:String)\
                    {holdTickets(input:{eventId:$e,items:$items,ttlSeconds:$ttl,\
                    idempotencyKey:$key}){id status}}";

fn hold_vars(event_id: &str, items: &[(&str, i64)], key: Option<&str>) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|(id, quantity)| json!({"ticketTypeId": id, "quantity": quantity}))
        .collect();
    json!({"e": event_id, "items": items, "key": key})
}

fn hold_with_ttl(event_id: &str, ticket_type_id: &str, ttl: i64) -> Value {
    let mut vars = hold_vars(event_id, &[(ticket_type_id, 1)], None);
    vars["ttl"] = json!(ttl);
    vars
}

/// `holdTickets` with the quantity written literally in the query, not as a variable.
fn hold_literal_quantity(event_id: &str, ticket_type_id: &str, quantity: &str) -> String {
    format!(
        "mutation{{holdTickets(input:{{eventId:\"{event_id}\",\
         items:[{{ticketTypeId:\"{ticket_type_id}\",quantity:{quantity}}}]}}){{id}}}}"
    )
}

fn unknown_id() -> String {
    Uuid::new_v4().to_string()
}

crate::on_both_flows!(bad_holds_are_refused_with_their_code_and_change_nothing);

async fn bad_holds_are_refused_with_their_code_and_change_nothing(server: TestServer) {
    let world = World::new(server).await;
    let (e, t) = (world.event_id.as_str(), world.ticket_type_id.as_str());
    // A hold by a buyer whose token names `subject`.
    let by = |subject: &str, code| Case {
        subject: Some(subject.to_owned()),
        ..case("a hold", HOLD, hold_vars(e, &[(t, 1)], None), code)
    };
    let twenty_one: Vec<(&str, i64)> = (0..21).map(|_| (t, 1)).collect();

    let cases = [
        case("quantity 0", HOLD, hold_vars(e, &[(t, 0)], None), INVALID),
        case("quantity -1", HOLD, hold_vars(e, &[(t, -1)], None), INVALID),
        case(
            "quantity 1000000",
            HOLD,
            hold_vars(e, &[(t, 1_000_000)], None),
            INVALID,
        ),
        case(
            "quantity 3 and -1 of one type",
            HOLD,
            hold_vars(e, &[(t, 3), (t, -1)], None),
            INVALID,
        ),
        case(
            "quantity 60 + 60 of one type",
            HOLD,
            hold_vars(e, &[(t, 60), (t, 60)], None),
            INVALID,
        ),
        case(
            "quantity above i32, as a variable",
            HOLD,
            hold_vars(e, &[(t, 99_999_999_999)], None),
            INVALID,
        ),
        // `HOLD` passed validation when the world was made: these variables are checked where
        // the resolver reads its arguments, before it runs.
        case(
            "quantity as a string, as a variable",
            HOLD,
            json!({"e": e, "items": [{"ticketTypeId": t, "quantity": "2"}]}),
            INVALID,
        ),
        case(
            "ttlSeconds as a string, as a variable",
            HOLD,
            json!({"e": e, "items": [{"ticketTypeId": t, "quantity": 1}], "ttl": "soon"}),
            INVALID,
        ),
        case(
            "a required variable missing",
            HOLD,
            json!({"items": [{"ticketTypeId": t, "quantity": 1}]}),
            INVALID,
        ),
        case(
            "quantity above i32, literal",
            hold_literal_quantity(e, t, "99999999999"),
            json!({}),
            INVALID,
        ),
        case(
            "quantity above i64, literal",
            hold_literal_quantity(e, t, "99999999999999999999999"),
            json!({}),
            INVALID,
        ),
        case(
            "quantity as a string",
            hold_literal_quantity(e, t, "\"2\""),
            json!({}),
            INVALID,
        ),
        case(
            "unknown ticket type",
            HOLD,
            hold_vars(e, &[(&unknown_id(), 1)], None),
            NOT_FOUND,
        ),
        case(
            "ticket type of another event",
            HOLD,
            hold_vars(e, &[(&world.other_ticket_type_id, 1)], None),
            NOT_FOUND,
        ),
        case(
            "one known and one unknown ticket type",
            HOLD,
            hold_vars(e, &[(t, 1), (&unknown_id(), 1)], None),
            NOT_FOUND,
        ),
        case(
            "unknown event",
            HOLD,
            hold_vars(&unknown_id(), &[(t, 1)], None),
            NOT_FOUND,
        ),
        case(
            "malformed event id",
            HOLD,
            hold_vars("nope", &[(t, 1)], None),
            INVALID,
        ),
        case(
            "malformed ticket type id",
            HOLD,
            hold_vars(e, &[("nope", 1)], None),
            INVALID,
        ),
        case("ttl 0", HOLD, hold_with_ttl(e, t, 0), INVALID),
        case("ttl -5", HOLD, hold_with_ttl(e, t, -5), INVALID),
        case("ttl 3601", HOLD, hold_with_ttl(e, t, 3601), INVALID),
        case(
            "ttl 10^12",
            HOLD,
            hold_with_ttl(e, t, 1_000_000_000_000),
            INVALID,
        ),
        case("no items", HOLD, hold_vars(e, &[], None), INVALID),
        case("21 items", HOLD, hold_vars(e, &twenty_one, None), INVALID),
        Case {
            label: "a token with an empty subject",
            ..by("", "UNAUTHENTICATED")
        },
        Case {
            label: "a token with a blank subject",
            ..by("   ", INVALID)
        },
        Case {
            label: "a token with a subject of 129 bytes",
            ..by(&"c".repeat(129), INVALID)
        },
        case(
            "a customerId other than the token's subject",
            "mutation($e:ID!,$t:ID!){holdTickets(input:{eventId:$e,customerId:\"mallory\",\
             items:[{ticketTypeId:$t,quantity:1}]}){id}}",
            json!({"e": e, "t": t}),
            "FORBIDDEN",
        ),
        case(
            "idempotency key reused for other items",
            HOLD,
            hold_vars(e, &[(t, 2)], Some(IDEMPOTENCY_KEY)),
            INVALID,
        ),
        case(
            "idempotency key reused for another event",
            HOLD,
            hold_vars(
                &world.other_event_id,
                &[(&world.other_ticket_type_id, 1)],
                Some(IDEMPOTENCY_KEY),
            ),
            INVALID,
        ),
        case(
            "empty idempotency key",
            HOLD,
            hold_vars(e, &[(t, 1)], Some("")),
            INVALID,
        ),
        case(
            "missing items",
            "mutation($e:ID!){holdTickets(input:{eventId:$e}){id}}",
            json!({"e": e}),
            INVALID,
        ),
    ];
    for case in &cases {
        world.check(case).await;
    }
    // The one retry that is not bad: the same key and items give back the same hold.
    let r = world
        .buyer
        .gql(HOLD, hold_vars(e, &[(t, 1)], Some(IDEMPOTENCY_KEY)))
        .await;
    assert_eq!(
        support::data(&r)["holdTickets"]["id"],
        world.hold_id.as_str()
    );
    assert_eq!(
        world.server.availability(t).await,
        json!({"capacity": 10, "sold": 0, "held": 1, "available": 9})
    );
}

crate::on_both_flows!(unknown_and_malformed_holds_cannot_be_extended_released_or_checked_out);

async fn unknown_and_malformed_holds_cannot_be_extended_released_or_checked_out(
    server: TestServer,
) {
    let world = World::new(server).await;
    let h = world.hold_id.as_str();
    let extend = "mutation($h:ID!,$ttl:Int){extendHold(holdId:$h,ttlSeconds:$ttl){id expiresAt}}";
    let release = "mutation($h:ID!){releaseHold(holdId:$h){id status}}";
    let checkout = "mutation($h:ID!,$p:String!,$k:String){checkout(input:{holdId:$h,\
                    paymentReference:$p,idempotencyKey:$k}){id}}";

    let cases = [
        case(
            "extend an unknown hold",
            extend,
            json!({"h": unknown_id(), "ttl": 60}),
            NOT_FOUND,
        ),
        case(
            "release an unknown hold",
            release,
            json!({"h": unknown_id()}),
            NOT_FOUND,
        ),
        case(
            "check out an unknown hold",
            checkout,
            json!({"h": unknown_id(), "p": "pay-1"}),
            NOT_FOUND,
        ),
        case(
            "extend a malformed id",
            extend,
            json!({"h": "nope", "ttl": 60}),
            INVALID,
        ),
        case(
            "release a malformed id",
            release,
            json!({"h": "nope"}),
            INVALID,
        ),
        case(
            "check out a malformed id",
            checkout,
            json!({"h": "nope", "p": "pay-1"}),
            INVALID,
        ),
        case("extend by 0 s", extend, json!({"h": h, "ttl": 0}), INVALID),
        case(
            "extend by -5 s",
            extend,
            json!({"h": h, "ttl": -5}),
            INVALID,
        ),
        case(
            "extend by 3601 s",
            extend,
            json!({"h": h, "ttl": 3601}),
            INVALID,
        ),
        case(
            "extend by 10^12 s",
            extend,
            json!({"h": h, "ttl": 1_000_000_000_000_i64}),
            INVALID,
        ),
        case(
            "check out with an empty payment reference",
            checkout,
            json!({"h": h, "p": ""}),
            INVALID,
        ),
        case(
            "check out with a blank payment reference",
            checkout,
            json!({"h": h, "p": "  "}),
            INVALID,
        ),
        case(
            "check out with a payment reference of 201 bytes",
            checkout,
            json!({"h": h, "p": "p".repeat(201)}),
            INVALID,
        ),
        case(
            "check out with an empty idempotency key",
            checkout,
            json!({"h": h, "p": "pay-1", "k": ""}),
            INVALID,
        ),
    ];
    for case in &cases {
        world.check(case).await;
    }
}

crate::on_both_flows!(bad_events_and_ticket_types_are_refused_and_change_nothing);

async fn bad_events_and_ticket_types_are_refused_and_change_nothing(server: TestServer) {
    let world = World::new(server).await;
    let e = world.event_id.as_str();
    let create_event = "mutation($n:String!){createEvent(input:{name:$n}){id}}";
    let create_type = "mutation($e:ID!,$n:String!,$p:Int!,$c:Int!,$m:Int){createTicketType(\
                       input:{eventId:$e,name:$n,priceCents:$p,capacity:$c,maxPerCustomer:$m}){id}}";
    let ticket_type = |event_id: &str, name: &str, price: i64, capacity: i64, max: Option<i64>| json!({"e": event_id, "n": name, "p": price, "c": capacity, "m": max});

    let cases = [
        case(
            "event with an empty name",
            create_event,
            json!({"n": ""}),
            INVALID,
        ),
        case(
            "event with a blank name",
            create_event,
            json!({"n": " \t "}),
            INVALID,
        ),
        case(
            "event with a name of 201 bytes",
            create_event,
            json!({"n": "n".repeat(201)}),
            INVALID,
        ),
        case(
            "negative capacity",
            create_type,
            ticket_type(e, "GA", 4500, -1, None),
            INVALID,
        ),
        case(
            "capacity above the limit",
            create_type,
            ticket_type(e, "GA", 4500, 10_000_001, None),
            INVALID,
        ),
        case(
            "negative price",
            create_type,
            ticket_type(e, "GA", -1, 10, None),
            INVALID,
        ),
        case(
            "price above the limit",
            create_type,
            ticket_type(e, "GA", 1_000_000_001, 10, None),
            INVALID,
        ),
        case(
            "maxPerCustomer 0",
            create_type,
            ticket_type(e, "GA", 4500, 10, Some(0)),
            INVALID,
        ),
        case(
            "maxPerCustomer -3",
            create_type,
            ticket_type(e, "GA", 4500, 10, Some(-3)),
            INVALID,
        ),
        case(
            "ticket type with an empty name",
            create_type,
            ticket_type(e, "", 4500, 10, None),
            INVALID,
        ),
        case(
            "ticket type of an unknown event",
            create_type,
            ticket_type(&unknown_id(), "GA", 4500, 10, None),
            NOT_FOUND,
        ),
        case(
            "ticket type of a malformed event id",
            create_type,
            ticket_type("nope", "GA", 4500, 10, None),
            INVALID,
        ),
    ];
    for case in &cases.map(by_admin) {
        world.check(case).await;
    }
}

crate::on_both_flows!(queries_of_unknown_ids_read_null_and_malformed_ids_are_invalid);

async fn queries_of_unknown_ids_read_null_and_malformed_ids_are_invalid(server: TestServer) {
    let world = World::new(server).await;

    // Unknown ids of single objects: null, no error.
    for (label, query) in [
        ("hold", "query($id:ID!){hold(id:$id){id}}"),
        ("order", "query($id:ID!){order(id:$id){id}}"),
        ("event", "query($id:ID!){event(id:$id){id}}"),
        ("ticketType", "query($id:ID!){ticketType(id:$id){id}}"),
    ] {
        let r = world.server.gql(query, json!({"id": unknown_id()})).await;
        assert_eq!(
            support::data(&r)[label],
            Value::Null,
            "{label} of an unknown id: {r}"
        );
    }

    let availability = "query($t:ID!){availability(ticketTypeId:$t){held}}";
    let cases = [
        case(
            "availability of an unknown ticket type",
            availability,
            json!({"t": unknown_id()}),
            NOT_FOUND,
        ),
        case(
            "availability of an event id",
            availability,
            json!({"t": world.event_id}),
            NOT_FOUND,
        ),
        case(
            "availability of a malformed id",
            availability,
            json!({"t": "nope"}),
            INVALID,
        ),
        case(
            "hold of a malformed id",
            "query{hold(id:\"nope\"){id}}",
            json!({}),
            INVALID,
        ),
        case(
            "order of a malformed id",
            "query{order(id:\"nope\"){id}}",
            json!({}),
            INVALID,
        ),
        case(
            "event of a malformed id",
            "query{event(id:\"nope\"){id}}",
            json!({}),
            INVALID,
        ),
    ];
    for case in &cases {
        world.check(case).await;
    }
}

#[tokio::test]
async fn queries_the_engine_refuses_are_invalid_input() {
    let db = TestDb::sqlite();
    let world = World::new(TestServer::start(db.url()).await).await;
    let cases = [
        case("syntax error", "{ events { id ", json!({}), INVALID),
        case(
            "not GraphQL at all",
            "SELECT * FROM hold",
            json!({}),
            INVALID,
        ),
        case(
            "unknown field",
            "{ events { id nope } }",
            json!({}),
            INVALID,
        ),
        case("unknown root field", "{ holds { id } }", json!({}), INVALID),
        case("missing argument", "{ hold { id } }", json!({}), INVALID),
        case(
            "argument of the wrong type",
            "{ hold(id: [1, 2]) { id } }",
            json!({}),
            INVALID,
        ),
        case(
            "missing variable",
            "query($id:ID!){hold(id:$id){id}}",
            json!({}),
            INVALID,
        ),
        case(
            "variable of the wrong type",
            "query($id:ID!){hold(id:$id){id}}",
            json!({"id": {"a": 1}}),
            INVALID,
        ),
        case(
            "unknown argument",
            "{ events(first: 3) { id } }",
            json!({}),
            INVALID,
        ),
        case(
            "object without a selection",
            "{ events }",
            json!({}),
            INVALID,
        ),
        case(
            "two anonymous operations",
            "{ events { id } } mutation { createEvent(input:{name:\"x\"}) { id } }",
            json!({}),
            INVALID,
        ),
        case(
            "nested 17 deep (limit 16)",
            nested_introspection(17),
            json!({}),
            INVALID,
        ),
        case(
            "nested 20 deep",
            nested_introspection(20),
            json!({}),
            INVALID,
        ),
    ];
    for case in &cases {
        world.check(case).await;
    }
}

/// `{ __schema { types { fields { type { ofType { ... name } } } } } }` with exactly `depth`
/// levels of fields, counting the leaf.
fn nested_introspection(depth: usize) -> String {
    assert!(depth > 5);
    let of_types = depth - 5;
    format!(
        "{{ __schema {{ types {{ fields {{ type {{ {}name{} }} }} }} }} }}",
        "ofType { ".repeat(of_types),
        " }".repeat(of_types)
    )
}

#[tokio::test]
async fn the_depth_limit_lets_graphiql_introspect() {
    let db = TestDb::sqlite();
    let world = World::new(TestServer::start(db.url()).await).await;

    let r = world.server.gql(&nested_introspection(16), json!({})).await;
    assert!(support::data(&r)["__schema"]["types"].is_array(), "{r}");
    let r = world.server.gql(&nested_introspection(17), json!({})).await;
    assert_eq!(support::error_code(&r).as_deref(), Some(INVALID), "{r}");
    let message = r["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("too deep"),
        "refused for another reason: {r}"
    );

    let r = world.server.gql(INTROSPECTION_QUERY, json!({})).await;
    let schema = &support::data(&r)["__schema"];
    assert_eq!(schema["queryType"]["name"], "QueryRoot", "{r}");
    let names: Vec<&str> = schema["types"]
        .as_array()
        .expect("types")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for name in [
        "Hold",
        "HoldStatus",
        "Availability",
        "HoldTicketsInput",
        "DateTime",
    ] {
        assert!(
            names.contains(&name),
            "{name} missing from the introspection: {names:?}"
        );
    }
}

#[tokio::test]
async fn a_body_that_is_not_a_graphql_request_is_a_4xx_with_invalid_input() {
    let db = TestDb::sqlite();
    let world = World::new(TestServer::start(db.url()).await).await;
    let before = world.snapshot().await;
    for (label, body) in [
        ("malformed JSON", "{bad json".to_owned()),
        (
            "not JSON",
            "mutation { createEvent(input:{name:\"x\"}) { id } }".to_owned(),
        ),
        (
            "a query that is not a string",
            r#"{"query": 42}"#.to_owned(),
        ),
        ("an empty body", String::new()),
        (
            "a batch",
            r#"[{"query": "mutation { createEvent(input:{name:\"x\"}) { id } }"}]"#.to_owned(),
        ),
    ] {
        let (status, answer) = post_raw(&world, body).await;
        assert!(status.is_client_error(), "{label}: HTTP {status}: {answer}");
        assert_eq!(
            support::error_code(&answer).as_deref(),
            Some(INVALID),
            "{label}: {answer}"
        );
    }
    assert_eq!(world.snapshot().await, before);
}

#[tokio::test]
async fn a_json_body_without_a_query_is_invalid_input_not_a_5xx() {
    let db = TestDb::sqlite();
    let world = World::new(TestServer::start(db.url()).await).await;
    let before = world.snapshot().await;
    for (label, body) in [
        ("no query", r#"{"variables": {}}"#),
        ("an empty batch", "[]"),
    ] {
        let (status, answer) = post_raw(&world, body.to_owned()).await;
        assert!(
            !status.is_server_error(),
            "{label}: HTTP {status}: {answer}"
        );
        assert_eq!(
            support::error_code(&answer).as_deref(),
            Some(INVALID),
            "{label}: {answer}"
        );
    }
    assert_eq!(world.snapshot().await, before);
}

#[tokio::test]
async fn a_body_over_the_size_limit_is_refused_with_413_and_not_run() {
    let db = TestDb::sqlite();
    let world = World::new(TestServer::start(db.url()).await).await;
    let before = world.snapshot().await;
    // A valid mutation, padded with blanks past the limit.
    let query = format!(
        "mutation {{ createEvent(input: {{name: \"Too Big\"}}) {{ id }} }}{}",
        " ".repeat(tickethold::http::REQUEST_BODY_BYTES_MAX)
    );
    let (status, answer) = post_raw(&world, json!({ "query": query }).to_string()).await;
    assert_eq!(status, reqwest::StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(
        support::error_code(&answer).as_deref(),
        Some(INVALID),
        "{answer}"
    );
    assert_eq!(world.snapshot().await, before, "the oversized mutation ran");
}

/// POSTs `body` as it is, labelled JSON; the status and the answer, which must be JSON.
async fn post_raw(world: &World, body: String) -> (reqwest::StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(world.server.url("/graphql"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /graphql");
    let status = response.status();
    let text = response.text().await.expect("body");
    let answer = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("HTTP {status}: the answer is not JSON ({e}): {text}"));
    (status, answer)
}

/// GraphiQL's standard introspection query (graphql-js `getIntrospectionQuery()`).
const INTROSPECTION_QUERY: &str = r#"
    query IntrospectionQuery {
      __schema {
        queryType { name }
        mutationType { name }
        subscriptionType { name }
        types {
          ...FullType
        }
        directives {
          name
          description
          locations
          args {
            ...InputValue
          }
        }
      }
    }

    fragment FullType on __Type {
      kind
      name
      description
      fields(includeDeprecated: true) {
        name
        description
        args {
          ...InputValue
        }
        type {
          ...TypeRef
        }
        isDeprecated
        deprecationReason
      }
      inputFields {
        ...InputValue
      }
      interfaces {
        ...TypeRef
      }
      enumValues(includeDeprecated: true) {
        name
        description
        isDeprecated
        deprecationReason
      }
      possibleTypes {
        ...TypeRef
      }
    }

    fragment InputValue on __InputValue {
      name
      description
      type { ...TypeRef }
      defaultValue
    }

    fragment TypeRef on __Type {
      kind
      name
      ofType {
        kind
        name
        ofType {
          kind
          name
          ofType {
            kind
            name
            ofType {
              kind
              name
              ofType {
                kind
                name
                ofType {
                  kind
                  name
                  ofType {
                    kind
                    name
                  }
                }
              }
            }
          }
        }
      }
    }
"#;
