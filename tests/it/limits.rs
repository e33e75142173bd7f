//! A limit on everything: rate limits on `holdTickets` per customer and per address (a flood
//! from one customer takes no more than its limit and starves nobody), subscriptions per
//! connection, the `connection_init` timeout, depth and complexity on subscriptions,
//! introspection and GraphiQL switched off; then the operations side: `/metrics` and the
//! JSON logs, which never carry a token.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::server::test_config;
use crate::support::ws::{Next, Socket, connect};
use crate::support::{self, Process, Protocol, Subscription, TestDb, TestServer, data, error_code};

const WAIT: Duration = Duration::from_secs(5);

const HOLD: &str = "mutation($e:ID!,$t:ID!,$ttl:Int){holdTickets(input:{eventId:$e,\
                    items:[{ticketTypeId:$t,quantity:1}],ttlSeconds:$ttl}){id}}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_customer_takes_no_more_than_its_limit_and_starves_nobody() {
    let db = TestDb::sqlite();
    let mut config = test_config(db.url());
    config.holds_per_minute_per_customer = 5;
    let server = TestServer::start_with(config).await;
    let event = server.create_event("Flood").await;
    let ticket_type = server.create_ticket_type(&event, 100, Some(4)).await;
    let vars = json!({"e": event, "t": ticket_type, "ttl": 600});

    // 200 holds from one bot, all at once, while 20 people hold one ticket each.
    let bot = server.as_buyer("bot");
    let people: Vec<_> = (0..20)
        .map(|i| server.as_buyer(&format!("person-{i}")))
        .collect();
    let flood = join_all((0..200).map(|_| bot.gql(HOLD, vars.clone())));
    let fair = join_all(people.iter().map(|person| person.gql(HOLD, vars.clone())));
    let (flood, fair) = tokio::join!(flood, fair);

    let mut codes: HashMap<String, usize> = HashMap::new();
    for answer in &flood {
        let code = error_code(answer).unwrap_or_else(|| "OK".to_owned());
        if code == "RATE_LIMITED" {
            let extensions = &answer["errors"][0]["extensions"];
            assert_eq!(extensions["scope"], "customer", "{answer}");
            assert!(
                extensions["retryAfterSeconds"].as_u64().unwrap() >= 1,
                "{answer}"
            );
        }
        *codes.entry(code).or_default() += 1;
    }
    let won = codes.get("OK").copied().unwrap_or(0);
    assert!(
        won <= 4,
        "the bot holds {won} tickets past its limit of 4: {codes:?}"
    );
    assert_eq!(
        won + codes.get("LIMIT_EXCEEDED").copied().unwrap_or(0),
        5,
        "{codes:?}"
    );
    assert_eq!(codes.get("RATE_LIMITED").copied(), Some(195), "{codes:?}");
    for answer in &fair {
        assert!(
            data(answer)["holdTickets"]["id"].is_string(),
            "a person was starved: {answer}"
        );
    }
    let stock = server.availability(&ticket_type).await;
    assert_eq!(
        stock["held"].as_u64().unwrap() as usize,
        won + 20,
        "{stock}"
    );
}

#[tokio::test]
async fn the_address_limit_counts_every_customer_of_an_address() {
    let db = TestDb::sqlite();
    let mut config = test_config(db.url());
    config.holds_per_minute_per_address = 10;
    config.trust_forwarded_for = true;
    let server = TestServer::start_with(config).await;
    let event = server.create_event("Addresses").await;
    let ticket_type = server.create_ticket_type(&event, 100, None).await;
    let vars = json!({"e": event, "t": ticket_type, "ttl": 600});
    let hold_from = |address: &'static str, customer: String| {
        let token = support::token(tickethold::auth::Role::Buyer, &customer);
        let request = reqwest::Client::new()
            .post(server.url("/graphql"))
            .header("Authorization", format!("Bearer {token}"))
            .header("X-Forwarded-For", format!("198.51.100.7, {address}"))
            .json(&json!({"query": HOLD, "variables": vars}));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let mut refused = 0;
    for i in 0..15 {
        let answer = hold_from("203.0.113.1", format!("c-{i}")).await;
        if error_code(&answer).as_deref() == Some("RATE_LIMITED") {
            assert_eq!(answer["errors"][0]["extensions"]["scope"], "address");
            refused += 1;
        } else {
            assert!(data(&answer)["holdTickets"]["id"].is_string(), "{answer}");
        }
    }
    assert_eq!(refused, 5, "15 holds from one address with a limit of 10");
    // Another address (the last X-Forwarded-For entry, set by the trusted proxy) has its own.
    let answer = hold_from("203.0.113.2", "c-other".to_owned()).await;
    assert!(data(&answer)["holdTickets"]["id"].is_string(), "{answer}");
    assert_eq!(server.availability(&ticket_type).await["held"], 11);
}

#[tokio::test]
async fn websocket_limits_subscriptions_init_time_and_query_shape() {
    let db = TestDb::sqlite();
    let mut config = test_config(db.url());
    config.subscriptions_per_connection_max = 2;
    config.connection_init_timeout_ms = 200;
    config.query_depth_max = 2;
    let server = TestServer::start_with(config).await;
    let event = server.create_event("Sockets").await;
    server.create_ticket_type(&event, 10, None).await;

    // Three subscriptions on one connection: the third is refused.
    let token = support::token(tickethold::auth::Role::Admin, "admin");
    let mut socket = connect(server.addr, Protocol::TransportWs).await;
    send(
        &mut socket,
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
    )
    .await;
    assert_eq!(next_json(&mut socket).await["type"], "connection_ack");
    for id in ["1", "2", "3"] {
        let query = "subscription($e:ID!){availabilityChanged(eventId:$e){available}}";
        send(&mut socket, json!({"id": id, "type": "subscribe", "payload": {"query": query, "variables": {"e": event}}})).await;
    }
    let mut refused = None;
    while refused.is_none() {
        let message = next_json(&mut socket).await;
        if message["type"] == "error" || message["payload"]["errors"].is_array() {
            refused = Some(message);
        }
    }
    // Which of the three is refused depends on the order the server runs them in.
    let refused = refused.unwrap();
    let errors = if refused["payload"].is_array() {
        &refused["payload"]
    } else {
        &refused["payload"]["errors"]
    };
    assert_eq!(
        errors[0]["extensions"]["code"], "TOO_MANY_SUBSCRIPTIONS",
        "{refused}"
    );

    // A connection that never sends connection_init is closed after the timeout.
    let mut silent = connect(server.addr, Protocol::TransportWs).await;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match silent.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a silent WebSocket stayed open");

    // The depth limit applies to subscriptions too.
    let deep = "subscription($e:ID!){holdExpired(eventId:$e){items{ticketTypeId}}}";
    let mut too_deep = Subscription::open(
        server.addr,
        Protocol::TransportWs,
        deep,
        json!({"e": event}),
    )
    .await;
    match too_deep.next_within(WAIT).await {
        Some(Next::Errors(errors)) => {
            assert_eq!(errors[0]["extensions"]["code"], "INVALID_INPUT", "{errors}")
        }
        other => panic!("a subscription deeper than the limit ran: {other:?}"),
    }
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .expect("send");
}

async fn next_json(socket: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a message in time")
        {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).expect("JSON"),
            Some(Ok(_)) => {}
            other => panic!("the WebSocket ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn introspection_and_graphiql_can_be_switched_off() {
    let db = TestDb::sqlite();
    let mut config = test_config(db.url());
    config.disable_introspection = true;
    config.disable_graphiql = true;
    let server = TestServer::start_with(config).await;
    let r = server
        .gql(
            "{__schema{queryType{name}} __type(name:\"Hold\"){name}}",
            json!({}),
        )
        .await;
    assert_eq!(
        data(&r),
        &json!({"__schema": null, "__type": null}),
        "introspection answered"
    );
    for path in [
        "/graphql",
        "/assets/graphiql/index.html",
        "/assets/vendor/graphiql/graphiql.min.js",
    ] {
        let page = reqwest::get(server.url(path)).await.unwrap();
        assert_eq!(page.status(), reqwest::StatusCode::NOT_FOUND, "{path}");
    }
    // The buyer's page stays.
    let page = reqwest::get(server.url("/")).await.unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.starts_with("default-src 'self'"), "{policy}");
    // The API itself still answers.
    assert!(data(&server.gql("{serverTime}", json!({})).await)["serverTime"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let db = TestDb::sqlite();
    let mut config = test_config(db.url());
    config.holds_per_minute_per_customer = 3;
    let server = TestServer::start_with(config).await;
    let event = server.create_event("Counted").await;
    let ticket_type = server.create_ticket_type(&event, 3, None).await;
    let hold = |customer: &'static str, ttl: i64| {
        server.hold(&event, customer, &ticket_type, 1, Some(ttl))
    };
    let id = |answer: Value| {
        data(&answer)["holdTickets"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let mut stock = Subscription::open(
        server.addr,
        Protocol::TransportWs,
        "subscription($e:ID!){availabilityChanged(eventId:$e){available}}",
        json!({"e": event}),
    )
    .await;
    stock.next_data(WAIT).await;
    let released = id(hold("a", 600).await);
    let confirmed = id(hold("b", 600).await);
    let expiring = id(hold("c", 2).await);
    assert_eq!(
        error_code(&hold("d", 600).await).as_deref(),
        Some("SOLD_OUT")
    );
    for _ in 0..3 {
        hold("e", 600).await; // SOLD_OUT, SOLD_OUT, SOLD_OUT: e's rate is 3 a minute
    }
    assert_eq!(
        error_code(&hold("e", 600).await).as_deref(),
        Some("RATE_LIMITED")
    );
    let a = server.as_buyer("a");
    data(
        &a.gql(
            "mutation($h:ID!){releaseHold(holdId:$h){id}}",
            json!({"h": released}),
        )
        .await,
    );
    let b = server.as_buyer("b");
    let checkout = "mutation($h:ID!){checkout(input:{holdId:$h,paymentReference:\"p\"}){id}}";
    data(&b.gql(checkout, json!({"h": confirmed})).await);
    data(&b.gql(checkout, json!({"h": confirmed})).await); // a retry: not a second order
    let mut expired = server.hold_by_id(&expiring).await;
    for _ in 0..50 {
        if expired["status"] == "EXPIRED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        expired = server.hold_by_id(&expiring).await;
    }
    assert_eq!(expired["status"], "EXPIRED");

    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert_eq!(value("tickethold_holds_created_total"), 3.0);
    assert_eq!(value("tickethold_holds_released_total"), 1.0);
    assert_eq!(value("tickethold_holds_confirmed_total"), 1.0);
    assert_eq!(value("tickethold_holds_expired_total"), 1.0);
    assert_eq!(value("tickethold_sold_out_total"), 4.0);
    assert_eq!(
        value("tickethold_rate_limited_total{scope=\"customer\"}"),
        1.0
    );
    // Process-wide (every test's servers count there): at least this test's batches of holds,
    // on SQLite decided under the lock, and the refusal of "d" once sold out from a read.
    assert!(value("tickethold_hold_batches_total{how=\"locked\"}") >= 3.0);
    assert!(value("tickethold_hold_batches_total{how=\"read\"}") >= 1.0);
    assert_eq!(value("tickethold_expiry_lag_seconds_count"), 1.0);
    assert!(value("tickethold_expiry_lag_seconds_sum") < 2.0);
    assert_eq!(
        value("tickethold_subscriptions_active{field=\"availabilityChanged\"}"),
        1.0
    );
    assert!(value("tickethold_graphql_request_duration_seconds_count") >= 12.0);
}

#[tokio::test]
async fn json_logs_have_a_line_per_state_change_and_never_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::sqlite();
    let env = [
        ("DATABASE_URL", db.url().to_owned()),
        ("TICKETHOLD_LOG_FORMAT", "json".to_owned()),
    ];
    let server = Process::start(&env, dir.path()).await;
    let event = server.create_event("Logged").await;
    let ticket_type = server.create_ticket_type(&event, 5, None).await;
    let held = server
        .hold(&event, "logged-buyer", &ticket_type, 1, Some(600))
        .await;
    let hold_id = data(&held)["holdTickets"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let buyer = server.as_buyer("logged-buyer");
    data(
        &buyer
            .gql(
                "mutation($h:ID!){releaseHold(holdId:$h){id}}",
                json!({"h": hold_id}),
            )
            .await,
    );
    // A refused token is not logged either.
    let bad = server.with_authorization(Some("Bearer not.a-valid.token-x1y2z3".to_owned()));
    bad.gql(HOLD, json!({"e": event, "t": ticket_type})).await;
    server.terminate().await;

    let log = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| std::fs::read_to_string(entry.path()).unwrap())
        .collect::<String>();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let about_the_hold: Vec<&str> = lines
        .iter()
        .filter(|line| line["hold_id"] == hold_id.as_str())
        .map(|line| line["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(about_the_hold, ["hold created", "hold released"], "{log}");
    for secret in [
        support::TEST_SECRET,
        "x1y2z3",
        &support::token(tickethold::auth::Role::Admin, "admin")[..20],
    ] {
        assert!(!log.contains(secret), "the log carries {secret}:\n{log}");
    }
}

#[tokio::test]
async fn development_mode_mints_tokens_and_is_off_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::sqlite();
    let off = Process::start(&[("DATABASE_URL", db.url().to_owned())], dir.path()).await;
    let status = reqwest::get(off.url("/dev/token?role=admin"))
        .await
        .unwrap()
        .status();
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
    off.terminate().await;

    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("DATABASE_URL", db.url().to_owned()),
        // Without a secret of its own, dev mode makes one up.
        ("TICKETHOLD_JWT_SECRET", String::new()),
        ("TICKETHOLD_DEV", "true".to_owned()),
    ];
    let dev = Process::start(&env, dir.path()).await;
    assert!(
        dev.log_text().contains("DEVELOPMENT MODE"),
        "{}",
        dev.log_text()
    );
    let minted: Value = reqwest::get(dev.url("/dev/token?role=admin&sub=ops"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(minted["role"], "admin");
    let admin = dev.with_authorization(Some(format!(
        "Bearer {}",
        minted["token"].as_str().unwrap()
    )));
    let r = admin
        .gql(
            "mutation{createEvent(input:{name:\"Demo\"}){id}}",
            json!({}),
        )
        .await;
    assert!(data(&r)["createEvent"]["id"].is_string(), "{r}");
    // The tests' secret is not this server's.
    let r = dev
        .gql(
            "mutation{createEvent(input:{name:\"Demo\"}){id}}",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("UNAUTHENTICATED"));
}
