//! How an engine reaches a table's files on an S3 warehouse, with no S3
//! key of its own. `loadTable` returns, for the caller and that table:
//! - the spec's remote-signing properties: the engine sends each S3
//!   request to `POST /v1/namespaces/{ns}/tables/{table}/sign` (the spec's
//!   `RemoteSignRequest` → `RemoteSignResult`; PyIceberg, the Java client);
//! - when the engine asks for vended credentials and a role is configured
//!   (`--s3-vend-role-arn`), STS keys whose session policy reads the same
//!   prefixes only (DuckDB, Daft).
//!
//! What a caller may read of a table:
//! - a tenant's `raw_events`: keys under its data partition
//!   (`data/project_id=<p>/`) and its derived metadata only;
//! - any other table: keys under that table's location.
//!
//! The signer also signs reads only (GET, HEAD) of a whole object, with no
//! sub-resource (`?acl`, `?list-type`, `?uploads` …); anything else gets
//! 403 and no signature. Signatures use the warehouse's credential and
//! expire with SigV4's 15-minute window.

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

/// The `config` and `storage-credentials` of a `LoadTableResult`: on a
/// warehouse Raindrop can sign for, where and how to ask for signatures,
/// and vended keys when `vend` (the client asked for them) and a role is
/// configured; otherwise nothing (local paths are read as they are).
pub async fn table_access(
    catalog: &RestCatalog,
    ns: &[String],
    table: &str,
    target: &Target,
    metadata_location: &str,
    vend: bool,
) -> Result<(Map<String, Value>, Vec<Value>), RestError> {
    let mut config = Map::new();
    let mut credentials = Vec::new();
    let Some(signer) = signed(catalog, metadata_location) else {
        return Ok((config, credentials));
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
    let Some(vendor) = catalog.warehouse.vendor.as_deref().filter(|_| vend) else {
        return Ok((config, credentials));
    };
    let (_, keys) = readable(catalog, target).await?;
    let who = match target {
        Target::TenantRawEvents(project) => project.as_str(),
        Target::Table(ident) => ident
            .namespace()
            .as_ref()
            .get(1)
            .map_or("admin", String::as_str),
    };
    let vended = vendor.vend(who, &keys).await?;
    let keys_config = [
        ("s3.access-key-id", vended.access_key_id.clone()),
        ("s3.secret-access-key", vended.secret_access_key.clone()),
        ("s3.session-token", vended.session_token.clone()),
        (
            "s3.session-token-expires-at-ms",
            vended.expires_at_ms.to_string(),
        ),
    ];
    let mut scoped = Map::new();
    for (k, v) in keys_config.into_iter().chain(signer.client_properties()) {
        config.insert(k.to_string(), Value::String(v.clone()));
        scoped.insert(k.to_string(), Value::String(v));
    }
    for key in &keys {
        credentials.push(json!({"prefix": signer.location(key), "config": scoped}));
    }
    Ok((config, credentials))
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
    let (location, allowed) = readable(&c, &target).await?;
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
    sign_outcome("ok");
    let mut out: Map<String, Value> = Map::new();
    for (name, value) in signed {
        out.insert(name, json!([value]));
    }
    Ok(json(
        StatusCode::OK,
        &json!({"uri": request.uri, "headers": out}),
    ))
}

/// The table's metadata location and the key prefixes the caller may read.
async fn readable(c: &RestCatalog, target: &Target) -> Result<(String, Vec<String>), RestError> {
    Ok(match target {
        Target::TenantRawEvents(project) => {
            let base = c.warehouse.raw_events().await?;
            let location = base.metadata().location().trim_end_matches('/');
            let data = format!("{location}/data/project_id={project}/");
            let derived = format!("{}/", tenant_dir(location, project));
            (
                base.metadata_location_result()?.to_string(),
                vec![
                    object_key(&data).into_owned(),
                    object_key(&derived).into_owned(),
                ],
            )
        }
        Target::Table(ident) => {
            let table = c.warehouse.load_table(ident).await?;
            let location = format!("{}/", table.metadata().location().trim_end_matches('/'));
            (
                table.metadata_location_result()?.to_string(),
                vec![object_key(&location).into_owned()],
            )
        }
    })
}

fn refuse(why: String) -> RestError {
    sign_outcome("rejected");
    RestError::new(
        StatusCode::FORBIDDEN,
        "ForbiddenException",
        format!("not signed: {why}"),
    )
}

fn sign_outcome(outcome: &'static str) {
    crate::metrics::metrics()
        .rest_sign_requests
        .get_or_create(&crate::metrics::Outcome { outcome })
        .inc();
}
