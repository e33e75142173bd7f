//! Who may do what: every role against every operation, allowed and refused, with nothing
//! changed by a refusal; tokens expired, tampered with, signed with another key, malformed or
//! missing; tokens verified with a public key; the WebSocket's `connection_init` token.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tickethold::auth::Role;
use tokio_tungstenite::tungstenite::Message;

use crate::support::client::Client;
use crate::support::ws::{Next, connect};
use crate::support::{self, Protocol, Subscription, TestDb, TestServer, data, error_code};

const WAIT: Duration = Duration::from_secs(5);

const HOLD: &str = "mutation($e:ID!,$t:ID!,$ttl:Int){holdTickets(input:{eventId:$e,\
                    items:[{ticketTypeId:$t,quantity:1}],ttlSeconds:$ttl}){id customerId}}";
const READ_HOLD: &str = "query($h:ID!){hold(id:$h){id customerId}}";
const EXTEND: &str = "mutation($h:ID!){extendHold(holdId:$h,ttlSeconds:120){id}}";
const RELEASE: &str = "mutation($h:ID!){releaseHold(holdId:$h){id status}}";
const CHECKOUT: &str = "mutation($h:ID!){checkout(input:{holdId:$h,paymentReference:\"p\"})\
                        {id customerId}}";
const READ_ORDER: &str = "query($o:ID!){order(id:$o){id customerId}}";
const CREATE_EVENT: &str = "mutation{createEvent(input:{name:\"Another\"}){id}}";
const CREATE_TYPE: &str = "mutation($e:ID!){createTicketType(input:{eventId:$e,name:\"VIP\",\
                           priceCents:100,capacity:5}){id}}";
const CATALOG: &str = "query($t:ID!){events{id ticketTypes{id}} availability(ticketTypeId:$t)\
                       {available} serverTime}";

/// The event, its ticket type and the callers of one story.
struct Sale {
    server: TestServer,
    event: String,
    ticket_type: String,
    alice: Client,
    bob: Client,
    service: Client,
    anonymous: Client,
}

impl Sale {
    async fn open(server: TestServer) -> Sale {
        let event = server.create_event("Roles").await;
        let ticket_type = server.create_ticket_type(&event, 20, None).await;
        Sale {
            alice: server.as_buyer("alice"),
            bob: server.as_buyer("bob"),
            service: server.as_role(Role::Service, "payments"),
            anonymous: server.anonymous(),
            server,
            event,
            ticket_type,
        }
    }

    fn vars(&self) -> Value {
        json!({"e": self.event, "t": self.ticket_type, "ttl": 600})
    }

    /// A new hold of alice's; its id.
    async fn alice_holds(&self) -> String {
        let r = self.alice.gql(HOLD, self.vars()).await;
        assert_eq!(data(&r)["holdTickets"]["customerId"], "alice");
        data(&r)["holdTickets"]["id"].as_str().unwrap().to_owned()
    }

    /// Everything a refused call could have changed.
    async fn snapshot(&self, hold: &str) -> Value {
        let r = self
            .server
            .gql(
                "query($t:ID!,$h:ID!){events{id ticketTypes{id}} \
                 availability(ticketTypeId:$t){sold held} hold(id:$h){status expiresAt}}",
                json!({"t": self.ticket_type, "h": hold}),
            )
            .await;
        data(&r).clone()
    }

    /// `client` is refused `query` with `code`, and nothing changes.
    async fn refused(&self, client: &Client, query: &str, vars: Value, code: &str, hold: &str) {
        let before = self.snapshot(hold).await;
        let r = client.gql(query, vars).await;
        assert_eq!(error_code(&r).as_deref(), Some(code), "{query}: {r}");
        assert_eq!(
            self.snapshot(hold).await,
            before,
            "{query} changed something"
        );
    }
}

crate::on_both_flows!(every_role_against_every_operation);

async fn every_role_against_every_operation(server: TestServer) {
    let sale = Sale::open(server).await;
    let admin = &*sale.server;
    let (alice, bob, service, anonymous) = (&sale.alice, &sale.bob, &sale.service, &sale.anonymous);
    let h = sale.alice_holds().await;
    let on_h = json!({"h": h});
    let e = json!({"e": sale.event});

    // The catalog: anyone reads it, only an admin changes it.
    for reader in [anonymous, alice, service, admin] {
        let r = reader.gql(CATALOG, json!({"t": sale.ticket_type})).await;
        assert!(data(&r)["availability"]["available"].is_number(), "{r}");
    }
    for (caller, code) in [
        (anonymous, "UNAUTHENTICATED"),
        (alice, "FORBIDDEN"),
        (service, "FORBIDDEN"),
    ] {
        sale.refused(caller, CREATE_EVENT, json!({}), code, &h)
            .await;
        sale.refused(caller, CREATE_TYPE, e.clone(), code, &h).await;
    }
    assert!(data(&admin.gql(CREATE_TYPE, e.clone()).await)["createTicketType"]["id"].is_string());

    // Holding: buyers only, for themselves.
    for (caller, code) in [
        (anonymous, "UNAUTHENTICATED"),
        (admin, "FORBIDDEN"),
        (service, "FORBIDDEN"),
    ] {
        sale.refused(caller, HOLD, sale.vars(), code, &h).await;
    }

    // Reading a hold: the owner, an admin or a service; to another buyer it does not exist.
    for reader in [alice, admin, service] {
        assert_eq!(
            data(&reader.gql(READ_HOLD, on_h.clone()).await)["hold"]["id"],
            h.as_str()
        );
    }
    assert_eq!(
        data(&bob.gql(READ_HOLD, on_h.clone()).await)["hold"],
        Value::Null
    );
    sale.refused(anonymous, READ_HOLD, on_h.clone(), "UNAUTHENTICATED", &h)
        .await;

    // Extending and releasing: the owner only.
    for query in [EXTEND, RELEASE] {
        sale.refused(anonymous, query, on_h.clone(), "UNAUTHENTICATED", &h)
            .await;
        sale.refused(bob, query, on_h.clone(), "NOT_FOUND", &h)
            .await;
        sale.refused(admin, query, on_h.clone(), "FORBIDDEN", &h)
            .await;
        sale.refused(service, query, on_h.clone(), "FORBIDDEN", &h)
            .await;
    }
    assert!(data(&alice.gql(EXTEND, on_h.clone()).await)["extendHold"]["id"].is_string());
    let released = sale.alice_holds().await;
    let r = alice.gql(RELEASE, json!({"h": released})).await;
    assert_eq!(data(&r)["releaseHold"]["status"], "RELEASED");

    // Checking out: the owner or a service.
    sale.refused(anonymous, CHECKOUT, on_h.clone(), "UNAUTHENTICATED", &h)
        .await;
    sale.refused(bob, CHECKOUT, on_h.clone(), "NOT_FOUND", &h)
        .await;
    sale.refused(admin, CHECKOUT, on_h.clone(), "FORBIDDEN", &h)
        .await;
    let by_service = service.gql(CHECKOUT, on_h.clone()).await;
    assert_eq!(data(&by_service)["checkout"]["customerId"], "alice");
    let own = sale.alice_holds().await;
    let by_alice = alice.gql(CHECKOUT, json!({"h": own})).await;
    assert_eq!(data(&by_alice)["checkout"]["customerId"], "alice");

    // Reading an order: the same as its hold.
    let order = json!({"o": data(&by_service)["checkout"]["id"]});
    for reader in [alice, admin, service] {
        assert!(data(&reader.gql(READ_ORDER, order.clone()).await)["order"]["id"].is_string());
    }
    assert_eq!(
        data(&bob.gql(READ_ORDER, order.clone()).await)["order"],
        Value::Null
    );
    sale.refused(anonymous, READ_ORDER, order, "UNAUTHENTICATED", &h)
        .await;

    // An unknown hold reads the same to bob as alice's.
    let unknown = json!({"h": uuid::Uuid::new_v4().to_string()});
    let r = bob.gql(EXTEND, unknown).await;
    assert_eq!(error_code(&r).as_deref(), Some("NOT_FOUND"));
    let r = bob.gql(EXTEND, json!({"h": released})).await;
    assert_eq!(
        r["errors"][0]["message"],
        bob.gql(EXTEND, json!({"h": uuid::Uuid::new_v4().to_string()}))
            .await["errors"][0]["message"]
    );
}

crate::on_both_flows!(subscriptions_follow_the_same_rules);

async fn subscriptions_follow_the_same_rules(server: TestServer) {
    let sale = Sale::open(server).await;
    let addr = sale.server.addr;
    let init = |role, subject: &str| json!({"Authorization": format!("Bearer {}", support::token(role, subject))});
    let countdown = "subscription($h:ID!){holdCountdown(holdId:$h){holdId secondsLeft}}";
    let expired = "subscription($e:ID!){holdExpired(eventId:$e){holdId customerId}}";
    let stock = "subscription($e:ID!){availabilityChanged(eventId:$e){available}}";
    let h = sale.alice_holds().await;

    // A countdown: the owner's; another buyer's is not found; nobody's needs a token.
    let mut own = Subscription::open_with(
        addr,
        Protocol::TransportWs,
        init(Role::Buyer, "alice"),
        countdown,
        json!({"h": h}),
    )
    .await;
    assert_eq!(
        own.next_data(WAIT).await["holdCountdown"]["holdId"],
        h.as_str()
    );
    for (payload, code) in [
        (init(Role::Buyer, "bob"), "NOT_FOUND"),
        (json!({}), "UNAUTHENTICATED"),
    ] {
        let mut refused = Subscription::open_with(
            addr,
            Protocol::TransportWs,
            payload,
            countdown,
            json!({"h": h}),
        )
        .await;
        match refused.next_within(WAIT).await {
            Some(Next::Errors(errors)) => {
                assert_eq!(errors[0]["extensions"]["code"], code, "{errors}")
            }
            other => panic!("expected {code}, got {other:?}"),
        }
    }

    // Expiries: a buyer sees only their own; a service sees all; availability is public.
    let e = json!({"e": sale.event});
    let mut bobs = Subscription::open_with(
        addr,
        Protocol::TransportWs,
        init(Role::Buyer, "bob"),
        expired,
        e.clone(),
    )
    .await;
    let mut services = Subscription::open_with(
        addr,
        Protocol::LegacyWs,
        init(Role::Service, "shop"),
        expired,
        e.clone(),
    )
    .await;
    let mut public =
        Subscription::open_with(addr, Protocol::TransportWs, json!({}), stock, e.clone()).await;
    assert!(public.next_data(WAIT).await["availabilityChanged"]["available"].is_number());
    let short = |who: &Client| {
        let vars = json!({"e": sale.event, "t": sale.ticket_type, "ttl": 1});
        let who = who.clone();
        async move {
            data(&who.gql(HOLD, vars).await)["holdTickets"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let alices = short(&sale.alice).await;
    let bobs_hold = short(&sale.bob).await;
    let mut seen_by_service = Vec::new();
    while seen_by_service.len() < 2 {
        let event = services.next_data(WAIT).await;
        seen_by_service.push(event["holdExpired"]["holdId"].as_str().unwrap().to_owned());
    }
    seen_by_service.sort();
    let mut both = vec![alices.clone(), bobs_hold.clone()];
    both.sort();
    assert_eq!(seen_by_service, both);
    let first = bobs.next_data(WAIT).await;
    assert_eq!(
        first["holdExpired"],
        json!({"holdId": bobs_hold, "customerId": "bob"})
    );
    assert!(
        bobs.next_within(Duration::from_millis(300)).await.is_none(),
        "bob saw alice's expiry"
    );
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated_and_change_nothing() {
    let db = TestDb::sqlite();
    let sale = Sale::open(TestServer::start(db.url()).await).await;
    let h = sale.alice_holds().await;
    let now = chrono::Utc::now().timestamp();
    let sign = |claims: Value, secret: &str| {
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let expired = sign(
        json!({"sub": "alice", "exp": now - 60}),
        support::TEST_SECRET,
    );
    let foreign = sign(
        json!({"sub": "alice", "exp": now + 600}),
        "another-secret-of-at-least-32-bytes!!",
    );
    let unknown_role = sign(
        json!({"sub": "alice", "role": "root", "exp": now + 600}),
        support::TEST_SECRET,
    );
    let no_expiry = sign(json!({"sub": "alice"}), support::TEST_SECRET);
    let none_alg = {
        // An unsigned token ("alg": "none") naming alice.
        use base64::Engine as _;
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": "alice", "exp": now + 600}))
        )
    };
    // Bob's valid token with its payload changed to alice's: the signature no longer matches.
    let tampered = {
        use base64::Engine as _;
        let bobs = support::token(Role::Buyer, "bob");
        let parts: Vec<&str> = bobs.split('.').collect();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap();
        let payload = String::from_utf8(payload)
            .unwrap()
            .replace("\"bob\"", "\"alice\"");
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload);
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    let cases = [
        ("expired", Some(format!("Bearer {expired}"))),
        ("signed with another key", Some(format!("Bearer {foreign}"))),
        ("tampered", Some(format!("Bearer {tampered}"))),
        ("an unknown role", Some(format!("Bearer {unknown_role}"))),
        ("without exp", Some(format!("Bearer {no_expiry}"))),
        ("unsigned (alg none)", Some(format!("Bearer {none_alg}"))),
        ("not a JWT", Some("Bearer garbage".to_owned())),
        (
            "not a bearer token",
            Some("Basic YWxpY2U6c2VjcmV0".to_owned()),
        ),
        ("missing", None),
    ];
    for (label, authorization) in cases {
        let client = sale.server.with_authorization(authorization.clone());
        for (query, vars) in [
            (HOLD, sale.vars()),
            (READ_HOLD, json!({"h": h})),
            (RELEASE, json!({"h": h})),
        ] {
            let before = sale.snapshot(&h).await;
            let r = client.gql(query, vars).await;
            assert_eq!(
                error_code(&r).as_deref(),
                Some("UNAUTHENTICATED"),
                "{label}: {r}"
            );
            let message = r["errors"][0]["message"].as_str().unwrap_or_default();
            if let Some(authorization) = &authorization {
                let token = authorization.split(' ').next_back().unwrap();
                assert!(
                    !message.contains(token),
                    "{label}: the token is echoed: {message}"
                );
            }
            assert_eq!(
                sale.snapshot(&h).await,
                before,
                "{label}: something changed"
            );
        }
        // The catalog stays readable whatever the token.
        let r = client.gql(CATALOG, json!({"t": sale.ticket_type})).await;
        if authorization.is_none() {
            assert!(data(&r)["events"].is_array());
        }
    }

    // A bad token in connection_init is refused before any subscription.
    let refused = init_refused(
        sale.server.addr,
        json!({"Authorization": format!("Bearer {expired}")}),
    )
    .await;
    assert!(refused, "an expired token opened a WebSocket");
    let accepted = init_refused(
        sale.server.addr,
        json!({"Authorization": format!("Bearer {}", support::token(Role::Buyer, "alice"))}),
    )
    .await;
    assert!(!accepted, "a valid token was refused");
}

/// Whether the server refuses a `graphql-transport-ws` connection with `payload` as its init.
async fn init_refused(addr: std::net::SocketAddr, payload: Value) -> bool {
    let mut socket = connect(addr, Protocol::TransportWs).await;
    let init = json!({"type": "connection_init", "payload": payload});
    socket.send(Message::text(init.to_string())).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("an answer to connection_init")
        {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                match message["type"].as_str() {
                    Some("connection_ack") => return false,
                    Some("connection_error") => return true,
                    _ => {}
                }
            }
            Some(Ok(Message::Close(frame))) => {
                // async-graphql closes a refused graphql-transport-ws init with 1002, which
                // graphql-ws clients take as fatal (no reconnection loop), and says why.
                let frame = frame.expect("a close frame");
                assert_eq!(u16::from(frame.code), 1002, "{frame:?}");
                assert!(frame.reason.contains("not authenticated"), "{frame:?}");
                return true;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return true,
        }
    }
}

#[tokio::test]
async fn tokens_can_be_verified_with_a_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private.pem");
    let public = dir.path().join("public.pem");
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        private.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let db = TestDb::sqlite();
    let mut config = crate::support::server::test_config(db.url());
    config.jwt_public_key_file = Some(public);
    config.jwt_algorithm = Some("EdDSA".to_owned());
    config.jwt_issuer = Some("https://id.example".to_owned());
    let server = TestServer::start_with(config).await;

    let key = jsonwebtoken::EncodingKey::from_ed_pem(&std::fs::read(&private).unwrap()).unwrap();
    let exp = chrono::Utc::now().timestamp() + 600;
    let sign = |claims: Value| {
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        format!(
            "Bearer {}",
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        )
    };
    let admin = server.with_authorization(Some(sign(
        json!({"sub": "ops", "role": "admin", "iss": "https://id.example", "exp": exp}),
    )));
    let r = admin.gql(CREATE_EVENT, json!({})).await;
    assert!(data(&r)["createEvent"]["id"].is_string(), "{r}");
    // Another issuer, or the tests' HS256 secret: refused.
    let elsewhere = server.with_authorization(Some(sign(
        json!({"sub": "ops", "role": "admin", "iss": "https://evil.example", "exp": exp}),
    )));
    assert_eq!(
        error_code(&elsewhere.gql(CREATE_EVENT, json!({})).await).as_deref(),
        Some("UNAUTHENTICATED")
    );
    let hs256 = server.as_role(Role::Admin, "ops");
    assert_eq!(
        error_code(&hs256.gql(CREATE_EVENT, json!({})).await).as_deref(),
        Some("UNAUTHENTICATED")
    );
}
