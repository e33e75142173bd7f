//! A cache of parsed and validated GraphQL documents. Clients send the same few queries again
//! and again (a shop's frontend has a handful): each distinct query text is parsed once, and
//! each of its operations validated once, rather than on every request.
//!
//! Validation depends on the document, except for one rule: the values of the variables must
//! fit the arguments they are passed to. A request whose validation is skipped still has its
//! variables checked, by the resolver that reads its arguments, and fails with `INVALID_INPUT`
//! before the resolver runs. So validation is skipped only where that order keeps bad input
//! from changing anything: queries, and mutations and subscriptions of one root field (in a
//! mutation of two fields the first would run before the second's arguments are read), in
//! documents without directives (whose variables decide which fields run).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
    NextValidation,
};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection,
    SelectionSet,
};
use async_graphql::{Request, ServerError, ServerResult, ValidationResult, Variables};

/// Distinct query texts kept; past it the cache starts afresh (a bound against clients that
/// build a new query text per request).
const QUERIES_MAX: usize = 1024;
/// Longest query text cached, in bytes.
const QUERY_BYTES_MAX: usize = 16 * 1024;

/// One query text, parsed, with the validation of those of its operations that may skip it.
struct Cached {
    document: ExecutableDocument,
    /// Per operation name (`None`: the request named none), the validation of the operations
    /// that may skip it, once they passed it.
    validated: RwLock<Vec<(Option<String>, ValidationResult)>>,
}

#[derive(Clone, Default)]
pub struct ParsedQueries {
    documents: Arc<RwLock<HashMap<String, Arc<Cached>>>>,
}

impl ExtensionFactory for ParsedQueries {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ForRequest {
            documents: self.documents.clone(),
            request: Mutex::default(),
        })
    }
}

/// The cache as one request sees it: what it learnt of the request before validation.
struct ForRequest {
    documents: Arc<RwLock<HashMap<String, Arc<Cached>>>>,
    request: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    operation_name: Option<String>,
    /// The cached document, when the query text is cached.
    cached: Option<Arc<Cached>>,
}

#[async_trait::async_trait]
impl Extension for ForRequest {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let request = next.run(ctx, request).await?;
        self.seen().operation_name = request.operation_name.clone();
        Ok(request)
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let cached = self
            .documents
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(query)
            .cloned();
        let cached = match cached {
            Some(cached) => cached,
            None => {
                let document = next.run(ctx, query, variables).await?;
                if query.len() > QUERY_BYTES_MAX {
                    return Ok(document);
                }
                let cached = Arc::new(Cached {
                    document,
                    validated: RwLock::default(),
                });
                let mut documents = self.documents.write().unwrap_or_else(|e| e.into_inner());
                if documents.len() >= QUERIES_MAX {
                    documents.clear();
                }
                documents.insert(query.to_owned(), cached.clone());
                cached
            }
        };
        let document = cached.document.clone();
        self.seen().cached = Some(cached);
        Ok(document)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let (operation_name, cached) = {
            let mut seen = self.seen();
            (seen.operation_name.take(), seen.cached.take())
        };
        let Some(cached) = cached else {
            return next.run(ctx).await;
        };
        if let Some(result) = cached.validated(operation_name.as_deref()) {
            return Ok(result);
        }
        let result = next.run(ctx).await?;
        if may_skip(&cached.document, operation_name.as_deref()) {
            let mut validated = cached.validated.write().unwrap_or_else(|e| e.into_inner());
            if !validated.iter().any(|(name, _)| *name == operation_name) {
                validated.push((operation_name, result));
            }
        }
        Ok(result)
    }
}

impl Cached {
    /// The validation of an operation that may skip it (only those are kept).
    fn validated(&self, operation_name: Option<&str>) -> Option<ValidationResult> {
        self.validated
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(name, _)| name.as_deref() == operation_name)
            .map(|(_, result)| *result)
    }
}

impl ForRequest {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.request.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether a request for `operation_name` in `document` may skip validation once the same
/// operation passed it (see the module's comment).
fn may_skip(document: &ExecutableDocument, operation_name: Option<&str>) -> bool {
    let operation = match (&document.operations, operation_name) {
        (DocumentOperations::Single(operation), None) => operation,
        (DocumentOperations::Multiple(operations), Some(name)) => match operations.get(name) {
            Some(operation) => operation,
            None => return false,
        },
        _ => return false,
    };
    let OperationDefinition {
        ty,
        variable_definitions,
        directives,
        selection_set,
    } = &operation.node;
    let root_fields = &selection_set.node.items;
    let one_root_field =
        root_fields.len() == 1 && matches!(root_fields[0].node, Selection::Field(_));
    (*ty == OperationType::Query || one_root_field)
        && directives.is_empty()
        && variable_definitions
            .iter()
            .all(|v| v.node.directives.is_empty())
        && no_directives(&selection_set.node)
        && document.fragments.values().all(|fragment| {
            fragment.node.directives.is_empty() && no_directives(&fragment.node.selection_set.node)
        })
}

fn no_directives(selection_set: &SelectionSet) -> bool {
    selection_set
        .items
        .iter()
        .all(|selection| match &selection.node {
            Selection::Field(field) => {
                field.node.directives.is_empty() && no_directives(&field.node.selection_set.node)
            }
            Selection::FragmentSpread(spread) => spread.node.directives.is_empty(),
            Selection::InlineFragment(inline) => {
                inline.node.directives.is_empty() && no_directives(&inline.node.selection_set.node)
            }
        })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_graphql::{EmptySubscription, Object, Schema};

    use super::*;

    /// Counts the validations that reach the engine (it runs after the cache in the chain).
    #[derive(Clone, Default)]
    struct Validations(Arc<AtomicUsize>);

    impl ExtensionFactory for Validations {
        fn create(&self) -> Arc<dyn Extension> {
            Arc::new(self.clone())
        }
    }

    #[async_trait::async_trait]
    impl Extension for Validations {
        async fn validation(
            &self,
            ctx: &ExtensionContext<'_>,
            next: NextValidation<'_>,
        ) -> Result<ValidationResult, Vec<ServerError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            next.run(ctx).await
        }
    }

    struct Query;

    #[Object]
    impl Query {
        async fn double(&self, x: i32) -> i32 {
            x * 2
        }
    }

    /// Counts the resolver runs: what a bad variable must never reach.
    struct Mutation(Arc<AtomicUsize>);

    #[Object]
    impl Mutation {
        async fn add(&self, x: i32) -> usize {
            self.0.fetch_add(1, Ordering::SeqCst) + x as usize
        }
    }

    #[tokio::test]
    async fn an_operation_is_validated_once_and_bad_variables_still_change_nothing() {
        let (validations, runs) = (Validations::default(), Arc::new(AtomicUsize::new(0)));
        let schema = Schema::build(Query, Mutation(runs.clone()), EmptySubscription)
            .extension(ParsedQueries::default())
            .extension(validations.clone())
            .finish();
        let run = |query: &str, x: serde_json::Value| {
            let request =
                Request::new(query).variables(Variables::from_json(serde_json::json!({ "x": x })));
            schema.execute(request)
        };
        let add = "mutation($x:Int!){ add(x:$x) }";

        assert!(run(add, 1.into()).await.is_ok());
        assert!(run(add, 2.into()).await.is_ok());
        assert_eq!(validations.0.load(Ordering::SeqCst), 1, "validated once");
        for bad in [
            serde_json::json!("3"),
            serde_json::json!(1e12),
            serde_json::Value::Null,
        ] {
            let response = run(add, bad.clone()).await;
            assert_eq!(response.errors.len(), 1, "{bad}: {response:?}");
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "no bad variable ran the resolver"
        );
        assert_eq!(validations.0.load(Ordering::SeqCst), 1, "validated once");

        let two = "mutation($x:Int!){ a: add(x:1) b: add(x:$x) }";
        assert!(run(two, 1.into()).await.is_ok());
        let response = run(two, "bad".into()).await;
        assert_eq!(response.errors.len(), 1, "{response:?}");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            4,
            "refused before either field ran"
        );
        assert_eq!(
            validations.0.load(Ordering::SeqCst),
            3,
            "validated every time"
        );

        let query = "query($x:Int!){ double(x:$x) }";
        assert!(run(query, 4.into()).await.is_ok());
        assert!(run(query, "four".into()).await.is_err());
        assert_eq!(validations.0.load(Ordering::SeqCst), 4);
    }

    fn skips(query: &str, operation_name: Option<&str>) -> bool {
        let document = async_graphql::parser::parse_query(query).expect("parses");
        may_skip(&document, operation_name)
    }

    #[test]
    fn queries_and_single_field_mutations_without_directives_skip() {
        assert!(skips("{ events { id } serverTime }", None));
        assert!(skips(
            "query($h:ID!){ hold(id:$h) { id ...F } } fragment F on Hold { status }",
            None
        ));
        assert!(skips(
            "mutation($h:ID!){ releaseHold(holdId:$h) { id } }",
            None
        ));
        assert!(skips(
            "query A { serverTime } mutation B { releaseHold(holdId:\"x\") { id } }",
            Some("B")
        ));
        assert!(skips(
            "subscription($e:ID!){ holdExpired(eventId:$e) { holdId } }",
            None
        ));
    }

    #[test]
    fn mutations_of_several_fields_and_documents_with_directives_do_not() {
        let two_fields = "mutation($a:ID!,$b:ID!){ a: releaseHold(holdId:$a) { id } \
                          b: releaseHold(holdId:$b) { id } }";
        assert!(!skips(two_fields, None));
        assert!(!skips(
            "mutation { ...M } fragment M on MutationRoot { serverTime }",
            None
        ));
        assert!(!skips(
            "query($x:Boolean!){ serverTime @skip(if:$x) }",
            None
        ));
        assert!(!skips(
            "query($x:Boolean!){ events { id @include(if:$x) } }",
            None
        ));
        assert!(!skips(
            "query($x:Boolean!){ ...F } fragment F on QueryRoot { serverTime @skip(if:$x) }",
            None
        ));
        assert!(!skips(
            "query($x:Boolean!){ events { ... @skip(if:$x) { id } } }",
            None
        ));
    }

    #[test]
    fn an_operation_the_request_does_not_select_unambiguously_does_not() {
        let two = "query A { serverTime } query B { serverTime }";
        assert!(!skips(two, None));
        assert!(!skips(two, Some("C")));
        assert!(!skips("{ serverTime }", Some("A")));
    }
}
