//! The S3 remote signer (`POST /v1/namespaces/{ns}/tables/{table}/sign`,
//! the spec's `RemoteSignRequest` → `RemoteSignResult`): how an engine
//! reads a table on an S3 warehouse with no S3 credential of its own.
//! `loadTable` tells the client to sign through the table's own endpoint,
//! so each request is checked against that table:
//! - reads only (GET, HEAD) of a whole object, no sub-resource (`?acl`,
//!   `?list-type`, `?uploads` …);
//! - a tenant's `raw_events`: keys under its data partition
//!   (`data/project_id=<p>/`) and its derived metadata only; any other
//!   table: keys under that table's location.
//!
//! Anything else gets 403 and no signature. Signatures use the warehouse's
//! credential and expire with SigV4's 15-minute window.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::RestCatalog;
use super::auth::reader;
use super::error::{RestError, json};
use super::handlers::{LEVELS, levels};
use super::scope::{Scope, Target};
use crate::catalog::tenant_view::tenant_dir;
use crate::storage::object_key;
use crate::storage::signer::S3Signer;

/// The spec's `RemoteSignRequest` (the fields Raindrop reads).
#[derive(Deserialize)]
struct SignRequest {
    method: String,
    uri: String,
    #[serde(default)]
    headers: BTreeMap<String, Vec<String>>,
}

/// The `config` of a `LoadTableResult`: on a warehouse Raindrop can sign
/// for, where and how to ask for signatures; otherwise nothing (local
/// paths are read as they are).
pub fn table_config(
    catalog: &RestCatalog,
    ns: &[String],
    table: &str,
    metadata_location: &str,
) -> Map<String, Value> {
    let mut config = Map::new();
    let Some(signer) = signed(catalog, metadata_location) else {
        return config;
    };
    let segment = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let ns = segment(&ns.join(&LEVELS.to_string()));
    let entries = [
        ("s3.remote-signing-enabled", "true".to_string()),
        ("s3.signer", "S3V4RestSigner".into()),
        (
            "s3.signer.endpoint",
            format!("v1/namespaces/{ns}/tables/{}/sign", segment(table)),
        ),
        // PyIceberg signs only through its fsspec FileIO.
        ("py-io-impl", "pyiceberg.io.fsspec.FsspecFileIO".into()),
    ];
    for (k, v) in entries.into_iter().chain(signer.client_properties()) {
        config.insert(k.to_string(), Value::String(v));
    }
    config
}

fn signed<'a>(catalog: &'a RestCatalog, location: &str) -> Option<&'a S3Signer> {
    let signer = catalog.warehouse.signer.as_deref()?;
    (location.starts_with("s3://") || location.starts_with("s3a://")).then_some(signer)
}

/// `POST /v1/namespaces/{ns}/tables/{table}/sign`.
pub async fn sign(
    State(c): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path((ns, table)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, RestError> {
    let caller = reader(&c, &headers)?;
    let ns = levels(&ns);
    let target = Scope::of(&c, &caller).await?.table(&ns, &table).await?;
    let request: SignRequest = serde_json::from_slice(&body).map_err(|e| {
        RestError::new(
            StatusCode::BAD_REQUEST,
            "BadRequestException",
            format!("not a RemoteSignRequest: {e}"),
        )
    })?;
    let (location, allowed) = allowed_prefixes(&c, target).await?;
    let Some(signer) = signed(&c, &location) else {
        return Err(RestError::new(
            StatusCode::BAD_REQUEST,
            "BadRequestException",
            "this table is not on an S3 warehouse Raindrop signs for (it needs static S3 keys, \
             --s3-access-key-id / AWS_ACCESS_KEY_ID)",
        ));
    };
    let method = match request.method.to_ascii_uppercase().as_str() {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        other => {
            return Err(refuse(format!(
                "Raindrop signs reads only (GET, HEAD), not {other}"
            )));
        }
    };
    let uri: Uri = request
        .uri
        .parse()
        .map_err(|_| refuse("the uri is not a valid URL".into()))?;
    if uri.query().is_some() {
        return Err(refuse(
            "Raindrop signs whole-object reads only, without a query (no listings or sub-resources)"
                .into(),
        ));
    }
    let key = signer.key_of(&uri).map_err(refuse)?;
    if !allowed.iter().any(|prefix| key.starts_with(prefix)) {
        tracing::debug!(%key, "remote signing refused: outside the table's readable prefixes");
        return Err(refuse(format!(
            "{key} is not a file of {}.{table} that this token may read",
            ns.join(".")
        )));
    }
    let amz: Vec<(String, String)> = request
        .headers
        .into_iter()
        .map(|(name, values)| (name, values.join(", ")))
        .collect();
    let signed = signer.sign(method, uri, &amz).await?;
    let mut out: Map<String, Value> = Map::new();
    for (name, value) in signed {
        out.insert(name, json!([value]));
    }
    Ok(json(
        StatusCode::OK,
        &json!({"uri": request.uri, "headers": out}),
    ))
}

/// The table's metadata location and the key prefixes its reader may sign.
async fn allowed_prefixes(
    c: &RestCatalog,
    target: Target,
) -> Result<(String, Vec<String>), RestError> {
    Ok(match target {
        Target::TenantRawEvents(project) => {
            let base = c.warehouse.raw_events().await?;
            let location = base.metadata().location().trim_end_matches('/');
            let data = format!("{location}/data/project_id={project}/");
            let derived = format!("{}/", tenant_dir(location, &project));
            (
                base.metadata_location_result()?.to_string(),
                vec![
                    object_key(&data).into_owned(),
                    object_key(&derived).into_owned(),
                ],
            )
        }
        Target::Table(ident) => {
            let table = c.warehouse.load_table(&ident).await?;
            let location = format!("{}/", table.metadata().location().trim_end_matches('/'));
            (
                table.metadata_location_result()?.to_string(),
                vec![object_key(&location).into_owned()],
            )
        }
    })
}

fn refuse(why: String) -> RestError {
    RestError::new(
        StatusCode::FORBIDDEN,
        "ForbiddenException",
        format!("not signed: {why}"),
    )
}
