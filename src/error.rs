//! Crate error type and the one place errors become gRPC statuses.
//!
//! Variants separate *user* mistakes (bad input, missing rights) from
//! *server* faults, so clients get a status they can act on and operators
//! get a log line only for what is really a bug or an outage.

use datafusion::error::DataFusionError;
use tonic::Status;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong inside Raindrop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No credential, or one that matches no token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but its role or project does not allow this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The request itself is wrong (schema, types, SQL, names).
    #[error("{0}")]
    InvalidArgument(String),
    /// A table, schema or handle that does not exist (for this caller).
    #[error("{0}")]
    NotFound(String),
    /// A table that the request wanted to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// A limit was hit; retrying later or with less may succeed.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A query ran past its time limit.
    #[error("{0}")]
    Timeout(String),
    /// A write lost a race (commit conflict after retries); retry it.
    #[error("{0}")]
    Aborted(String),
    /// Storage or catalog temporarily unreachable; the same request can
    /// succeed later.
    #[error("{0}")]
    Unavailable(String),
    /// A valid request for something Raindrop deliberately does not do.
    #[error("{0}")]
    Unsupported(String),
    /// Iceberg catalog or storage failure.
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    /// Query engine failure.
    #[error("{0}")]
    DataFusion(#[from] Box<DataFusionError>),
    /// Arrow failure on server-produced data.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Local I/O (token file, data dir).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A bug: an invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        // Our own errors travel through DataFusion callbacks as `External`:
        // unwrap them so they keep their status code.
        match e {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::DataFusion(Box::new(DataFusionError::External(other))),
            },
            DataFusionError::Context(ctx, inner) => match Error::from(*inner) {
                Error::DataFusion(df) => {
                    Error::DataFusion(Box::new(DataFusionError::Context(ctx, df)))
                }
                ours => ours,
            },
            other => Error::DataFusion(Box::new(other)),
        }
    }
}

impl Error {
    /// A copy of this error for each request that shared a failed group
    /// commit: same status code, same message.
    pub fn for_waiter(&self) -> Error {
        let m = self.to_string();
        match self {
            Error::Unauthenticated(_) => Error::Unauthenticated(m),
            Error::PermissionDenied(_) => Error::PermissionDenied(m),
            Error::InvalidArgument(_) => Error::InvalidArgument(m),
            Error::NotFound(_) => Error::NotFound(m),
            Error::AlreadyExists(_) => Error::AlreadyExists(m),
            Error::ResourceExhausted(_) => Error::ResourceExhausted(m),
            Error::Aborted(_) => Error::Aborted(m),
            Error::Timeout(_) => Error::Timeout(m),
            Error::Unsupported(_) => Error::Unsupported(m),
            Error::Unavailable(_) => Error::Unavailable(m),
            Error::Iceberg(e) if e.kind() == iceberg::ErrorKind::CatalogCommitConflicts => {
                Error::Aborted(format!("{m}; the write was not applied, retry it"))
            }
            Error::Iceberg(e) if retryable(e) => Error::Unavailable(unavailable(&m)),
            _ => Error::Internal(m),
        }
    }

    /// Wrap into a DataFusion error without losing the variant.
    pub fn into_datafusion(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
    }
}

/// Whether `e`, or an error it wraps (iceberg wraps storage errors, e.g.
/// "failed to finish parquet writer", and catalog-database errors), is a
/// retryable storage or catalog failure.
fn retryable(e: &iceberg::Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if err
            .downcast_ref::<iceberg::Error>()
            .is_some_and(iceberg::Error::retryable)
            || err.downcast_ref::<sqlx::Error>().is_some_and(transient)
        {
            return true;
        }
        current = err.source();
    }
    false
}

/// Whether a catalog-database error can go away by itself: the database is
/// unreachable, restarting or out of connections, or the statement lost a
/// serialization race. A syntax or constraint error cannot.
fn transient(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed => true,
        // PostgreSQL SQLSTATE classes: 08 connection exception, 53
        // insufficient resources, 57P0x shutdown/starting up, 40001 and
        // 40P01 serialization failure and deadlock. SQLite: 5 busy, 6 locked.
        E::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P0")
                || matches!(code.as_ref(), "40001" | "40P01" | "5" | "6")
        }),
        _ => false,
    }
}

/// A failed catalog-database call, named by `what`: `Unavailable` (retry)
/// when the database may come back, else `Internal`.
pub fn database_error(what: &str, e: sqlx::Error) -> Error {
    if transient(&e) {
        Error::Unavailable(format!("catalog database unavailable, retry: {what}: {e}"))
    } else {
        Error::Internal(format!("{what}: {e}"))
    }
}

/// The message of a retryable storage failure.
fn unavailable(m: &str) -> String {
    format!("storage temporarily unavailable, retry: {m}")
}

fn datafusion_status(e: &DataFusionError) -> Status {
    use DataFusionError as D;
    match e {
        D::External(inner) => match inner.downcast_ref::<iceberg::Error>() {
            Some(ice) if retryable(ice) => Status::unavailable(unavailable(&e.to_string())),
            _ => {
                tracing::error!(error = %e, "query failed");
                Status::internal(e.to_string())
            }
        },
        D::SQL(..) | D::Plan(..) | D::SchemaError(..) | D::NotImplemented(..) => {
            Status::invalid_argument(e.to_string())
        }
        D::ResourcesExhausted(..) => Status::resource_exhausted(e.to_string()),
        D::Execution(..) | D::ArrowError(..) => Status::invalid_argument(e.to_string()),
        D::Context(_, inner) | D::Diagnostic(_, inner) => {
            let inner = datafusion_status(inner);
            Status::new(inner.code(), e.to_string())
        }
        D::Shared(inner) => datafusion_status(inner),
        D::Collection(errors) => match errors.first() {
            Some(first) => Status::new(datafusion_status(first).code(), e.to_string()),
            None => Status::internal(e.to_string()),
        },
        D::Configuration(..) => Status::invalid_argument(e.to_string()),
        _ => {
            tracing::error!(error = %e, "query failed");
            Status::internal(e.to_string())
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let status = e.into_status();
        // A refused request is an operator's only clue to what clients get
        // wrong; the request's `rpc` span adds the RPC and the token id.
        // Server faults were logged as errors by `into_status`.
        if status.code() != tonic::Code::Internal {
            tracing::warn!(code = ?status.code(), reason = status.message(), "request rejected");
        }
        status
    }
}

impl Error {
    /// The gRPC status for this error, without the `warn` line the
    /// conversion writes: for errors that travel on inside another error
    /// and are logged where they finally leave.
    pub fn into_status(self) -> Status {
        match self {
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::Unsupported(m) => Status::unimplemented(m),
            Error::Aborted(m) => Status::aborted(m),
            Error::Timeout(m) => Status::deadline_exceeded(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::DataFusion(e) => datafusion_status(&e),
            Error::Iceberg(e) => {
                if e.kind() == iceberg::ErrorKind::CatalogCommitConflicts {
                    Status::aborted(format!("{e}; the write was not applied, retry it"))
                } else if retryable(&e) {
                    tracing::warn!(error = %e, "storage unavailable");
                    Status::unavailable(unavailable(&e.to_string()))
                } else {
                    tracing::error!(error = ?e, "iceberg failure");
                    Status::internal(format!("storage error: {e}"))
                }
            }
            e @ (Error::Arrow(_) | Error::Io(_) | Error::Internal(_)) => {
                tracing::error!(error = ?e, "internal failure");
                Status::internal(e.to_string())
            }
        }
    }
}
