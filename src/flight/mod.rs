//! The Arrow Flight SQL endpoint. Deliberately thin: decode the request,
//! authenticate, call the query or ingest service, encode the answer.
//!
//! - [`service`]: the `FlightSqlService` trait, one short delegate per RPC;
//! - [`statement`]: statements and prepared statements (plan, execute,
//!   update, bind);
//! - [`put`]: `DoPut` decoding and ingest;
//! - [`metadata`]: catalogs, schemas, tables, table and type info;
//! - [`encode`]: `FlightInfo`s, tickets, single-batch answers;
//! - [`auth`], [`ticket`], [`prepared`], [`planned`], [`ipc`], [`sql_info`]:
//!   credentials, statement tickets, the two statement caches, IPC size
//!   checks and the `GetSqlInfo` answer.

pub mod auth;
pub mod columns;
mod encode;
pub mod ipc;
mod metadata;
pub mod planned;
pub mod prepared;
mod put;
mod service;
mod sql_info;
mod statement;
pub mod ticket;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Status};

use crate::error::Result;
use crate::ingest::Ingestor;
use crate::maintenance::schedule::Background;
use crate::query::QueryEngine;
use crate::tenant::Principal;
use crate::tenant::tokens::TokenStore;

pub use put::{REQUEST_ID_HEADER, REQUEST_ID_OPTION};

/// Shared state behind the Flight service.
#[derive(Debug)]
pub struct Services {
    /// Token → principal.
    pub tokens: Arc<TokenStore>,
    /// Query sessions.
    pub query: QueryEngine,
    /// Ingest.
    pub ingest: Ingestor,
    /// Open prepared statements.
    pub prepared: prepared::PreparedStatements,
    /// Queries planned by `GetFlightInfo`, awaiting their `DoGet`.
    pub planned: planned::PlannedQueries,
    /// Background maintenance, stopped with the services.
    pub maintenance: Background,
    /// Set once shutdown began: `/readyz` then tells load balancers to
    /// send new calls elsewhere while in-flight ones finish.
    pub draining: std::sync::atomic::AtomicBool,
}

/// Flight SQL service over [`Services`].
#[derive(Clone)]
pub struct RaindropFlightService {
    services: Arc<Services>,
    sql_info: Arc<arrow_flight::sql::metadata::SqlInfoData>,
}

impl std::fmt::Debug for RaindropFlightService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaindropFlightService")
            .finish_non_exhaustive()
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl RaindropFlightService {
    /// Build the service.
    pub fn new(services: Arc<Services>) -> Self {
        Self {
            services,
            sql_info: Arc::new(sql_info::build()),
        }
    }

    fn principal<T>(&self, request: &Request<T>) -> Result<Principal> {
        let token = auth::token_from_metadata(request.metadata())?;
        let principal = self.services.tokens.authenticate(&token)?;
        tracing::Span::current().record("token_id", tracing::field::display(&principal.token_id));
        Ok(principal)
    }
}
