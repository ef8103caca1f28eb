//! Credentials on the wire, for every protocol: an `authorization` header
//! with `Bearer <token>`, or Basic auth whose password (or, for tools with
//! only a user field, whose user) is the token.

use base64::Engine;

use crate::error::{Error, Result};

/// Parse an `authorization` header value.
pub fn parse_authorization(header: &str) -> Result<String> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Ok(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        // Go's Flight client (ADBC) sends unpadded base64; accept both.
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = engine
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Error::Unauthenticated("malformed Basic credentials".into()))?;
        let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
        // Password is the token; tools that only have a "user" field may put it there.
        let token = if password.is_empty() { user } else { password };
        if !token.is_empty() {
            return Ok(token.to_string());
        }
    }
    Err(Error::Unauthenticated(
        "unsupported authorization header: use 'Bearer <token>' or Basic auth with the token as password".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic() {
        assert_eq!(parse_authorization("Bearer abc").unwrap(), "abc");
        let basic = base64::engine::general_purpose::STANDARD.encode("acme:secret-token");
        assert_eq!(
            parse_authorization(&format!("Basic {basic}")).unwrap(),
            "secret-token"
        );
        let user_only = base64::engine::general_purpose::STANDARD.encode("secret-token:");
        assert_eq!(
            parse_authorization(&format!("Basic {user_only}")).unwrap(),
            "secret-token"
        );
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode("acme:tok-12345");
        assert_eq!(
            parse_authorization(&format!("Basic {unpadded}")).unwrap(),
            "tok-12345"
        );
        assert!(parse_authorization("Bearer ").is_err());
        assert!(parse_authorization("Digest x").is_err());
    }
}
