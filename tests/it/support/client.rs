//! A GraphQL client over HTTP, with shorthands for the calls most tests make. It calls as an
//! admin (who sets up the catalog and reads every hold) unless told to call as someone else;
//! holds are taken as the buyer they are for.

use serde_json::{Value, json};
use tickethold::auth::Role;

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// The `Authorization` header sent, if any.
    authorization: Option<String>,
}

impl Client {
    /// A client of the server at `base` (`http://127.0.0.1:PORT`), calling as an admin.
    pub fn new(base: String) -> Client {
        Client {
            base,
            http: reqwest::Client::new(),
            authorization: Some(format!("Bearer {}", super::token(Role::Admin, "admin"))),
        }
    }

    /// The same server, called with `authorization` (`None`: no header at all).
    pub fn with_authorization(&self, authorization: Option<String>) -> Client {
        Client {
            authorization,
            ..self.clone()
        }
    }

    /// The same server, called with a token of `role` for `subject`.
    pub fn as_role(&self, role: Role, subject: &str) -> Client {
        self.with_authorization(Some(format!("Bearer {}", super::token(role, subject))))
    }

    /// The same server, called by the buyer `customer`.
    pub fn as_buyer(&self, customer: &str) -> Client {
        self.as_role(Role::Buyer, customer)
    }

    pub fn anonymous(&self) -> Client {
        self.with_authorization(None)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Whether `/readyz` answers 200.
    pub async fn ready(&self) -> bool {
        let ready = self.http.get(self.url("/readyz")).send().await;
        ready.is_ok_and(|r| r.status().is_success())
    }

    /// Runs a query or mutation and returns the whole response (data and errors).
    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        match self.try_gql(query, variables).await {
            Ok(response) => response,
            Err(error) => panic!("POST /graphql: {error}"),
        }
    }

    /// `gql`, but a server that cannot be reached is an `Err`, as a load balancer would see it.
    pub async fn try_gql(&self, query: &str, variables: Value) -> Result<Value, reqwest::Error> {
        let mut request = self.http.post(self.url("/graphql"));
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        let response = request
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await?;
        assert!(response.status().is_success(), "HTTP {}", response.status());
        response.json().await
    }

    pub async fn create_event(&self, name: &str) -> String {
        let r = self
            .gql(
                "mutation($n:String!){createEvent(input:{name:$n}){id}}",
                json!({"n": name}),
            )
            .await;
        super::data(&r)["createEvent"]["id"]
            .as_str()
            .expect("event id")
            .to_owned()
    }

    pub async fn create_ticket_type(
        &self,
        event_id: &str,
        capacity: i64,
        max_per_customer: Option<i64>,
    ) -> String {
        let r = self
            .gql(
                "mutation($e:ID!,$c:Int!,$m:Int){createTicketType(input:{eventId:$e,name:\"GA\",\
                 priceCents:4500,capacity:$c,maxPerCustomer:$m}){id}}",
                json!({"e": event_id, "c": capacity, "m": max_per_customer}),
            )
            .await;
        super::data(&r)["createTicketType"]["id"]
            .as_str()
            .expect("ticket type id")
            .to_owned()
    }

    /// `holdTickets` of one item by the buyer `customer_id`; returns the whole response.
    pub async fn hold(
        &self,
        event_id: &str,
        customer_id: &str,
        ticket_type_id: &str,
        quantity: i64,
        ttl_seconds: Option<i64>,
    ) -> Value {
        self.as_buyer(customer_id)
            .gql(
                "mutation($e:ID!,$t:ID!,$q:Int!,$ttl:Int){holdTickets(input:{eventId:$e,\
                 items:[{ticketTypeId:$t,quantity:$q}],ttlSeconds:$ttl})\
                 {id status expiresAt secondsLeft items{ticketTypeId quantity}}}",
                json!({"e": event_id, "t": ticket_type_id, "q": quantity, "ttl": ttl_seconds}),
            )
            .await
    }

    /// A hold read back by id (`null` if there is none).
    pub async fn hold_by_id(&self, id: &str) -> Value {
        let r = self
            .gql(
                "query($id:ID!){hold(id:$id){id status expiresAt endedAt}}",
                json!({"id": id}),
            )
            .await;
        super::data(&r)["hold"].clone()
    }

    pub async fn availability(&self, ticket_type_id: &str) -> Value {
        let r = self
            .gql(
                "query($t:ID!){availability(ticketTypeId:$t){capacity sold held available}}",
                json!({"t": ticket_type_id}),
            )
            .await;
        super::data(&r)["availability"].clone()
    }
}
