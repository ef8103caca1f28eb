//! End-to-end tests: the real server on 127.0.0.1:0 over a temp dir, real
//! Flight SQL, real Iceberg tables in a real SQLite catalog and local
//! warehouse, or in a real PostgreSQL catalog and S3 bucket (see
//! [`backend`]).

mod admission;
mod attacks;
mod backend;
mod cache;
mod client_compat;
mod commit;
mod common;
mod compact;
mod errors;
mod evolution;
mod faults;
mod flight_sql;
mod hold;
mod ingest;
mod isolation;
mod lifecycle;
mod limits;
mod locations;
mod metadata;
mod object_log;
mod processes;
mod pruning;
mod seed_query;
mod slt;
mod tenant_view;
mod tls;
mod wal;
