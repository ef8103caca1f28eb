//! Who calls the REST catalog: the OAuth2 `client_credentials` token
//! endpoint (what PyIceberg's `credential=` and DuckDB's `CLIENT_SECRET`
//! use), and the bearer check of every other route.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::RestCatalog;
use super::error::{RestError, json, oauth_error};
use crate::error::Error;
use crate::tenant::Principal;
use crate::tenant::credentials::parse_authorization;

/// Lifetime of an access token: clients refresh on a 401 or before expiry.
const ACCESS_TTL: Duration = Duration::from_secs(3600);

/// `POST /v1/oauth/tokens`: a Raindrop token as the client secret (form
/// `client_secret`, or the password of Basic auth), a short-lived access
/// token out.
pub async fn issue(
    State(catalog): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut grant = None;
    let mut secret = None;
    for (k, v) in form_urlencoded::parse(&body) {
        match k.as_ref() {
            "grant_type" => grant = Some(v.into_owned()),
            "client_secret" => secret = Some(v.into_owned()),
            _ => {}
        }
    }
    if grant.as_deref() != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type=client_credentials is supported; the client secret is a Raindrop token",
        );
    }
    let secret = match secret.filter(|s| !s.is_empty()) {
        Some(s) => s,
        None => match authorization(&headers).map(parse_authorization) {
            Some(Ok(s)) => s,
            _ => {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "no client secret: send a Raindrop token as client_secret or as the Basic auth password",
                );
            }
        },
    };
    match catalog.tokens.issue_access(&secret, ACCESS_TTL) {
        Ok((token, _)) => json(
            StatusCode::OK,
            &serde_json::json!({
                "access_token": token,
                "token_type": "bearer",
                "expires_in": ACCESS_TTL.as_secs(),
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            }),
        ),
        Err(e) => oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", &e.to_string()),
    }
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// The caller of a catalog route, who must be allowed to read.
pub fn reader(catalog: &RestCatalog, headers: &HeaderMap) -> Result<Principal, RestError> {
    let header = authorization(headers).ok_or_else(|| {
        Error::Unauthenticated(
            "missing credentials: send 'Authorization: Bearer <token>', or get an access token from /v1/oauth/tokens".into(),
        )
    })?;
    let principal = catalog.tokens.authenticate(&parse_authorization(header)?)?;
    principal.require_read()?;
    Ok(principal)
}
