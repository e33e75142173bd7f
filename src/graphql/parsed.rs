//! A cache of parsed GraphQL documents. Clients send the same few queries again and again (a
//! shop's frontend has a handful); parsing one costs more than copying its parsed form, so each
//! distinct query text is parsed once. Validation still runs on every request.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{ServerResult, Variables};

/// Distinct query texts kept; past it the cache starts afresh (a bound against clients that
/// build a new query text per request).
const QUERIES_MAX: usize = 1024;
/// Longest query text cached, in bytes.
const QUERY_BYTES_MAX: usize = 16 * 1024;

#[derive(Clone, Default)]
pub struct ParsedQueries {
    documents: Arc<RwLock<HashMap<String, ExecutableDocument>>>,
}

impl ExtensionFactory for ParsedQueries {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Extension for ParsedQueries {
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
        if let Some(document) = cached {
            return Ok(document);
        }
        let document = next.run(ctx, query, variables).await?;
        if query.len() <= QUERY_BYTES_MAX {
            let mut documents = self.documents.write().unwrap_or_else(|e| e.into_inner());
            if documents.len() >= QUERIES_MAX {
                documents.clear();
            }
            documents.insert(query.to_owned(), document.clone());
        }
        Ok(document)
    }
}
