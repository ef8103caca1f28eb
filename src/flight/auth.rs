//! Credentials on the wire: `authorization: Bearer <token>` on every call,
//! or a Basic-auth handshake (what JDBC and ADBC send for user/password),
//! whose password is the token and whose answer is the bearer header.

use tonic::metadata::MetadataMap;

use crate::error::{Error, Result};
pub use crate::tenant::credentials::parse_authorization;

/// The secret carried by an `authorization` header, Bearer or Basic.
pub fn token_from_metadata(metadata: &MetadataMap) -> Result<String> {
    let header = metadata
        .get("authorization")
        .ok_or_else(|| {
            Error::Unauthenticated(
                "missing credentials: send 'authorization: Bearer <token>' or handshake with Basic auth (password = token)".into(),
            )
        })?
        .to_str()
        .map_err(|_| Error::Unauthenticated("authorization header is not ASCII".into()))?;
    parse_authorization(header)
}
