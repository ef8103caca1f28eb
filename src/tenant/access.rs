//! Short-lived access tokens standing for a token: what the REST
//! catalog's OAuth endpoint hands out, so a long-lived secret crosses the
//! wire once. `rda.<token id>.<expiry, unix s>.<HMAC under the token key>`:
//! nothing to store, valid on every node sharing the key, and dead as soon
//! as the token is revoked (the record is looked up on each use).

use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::tokens::TokenRecord;
use crate::error::{Error, Result};

/// An access token for `token_id`, valid for `ttl`.
pub fn issue(key: &[u8], token_id: &str, ttl: Duration) -> String {
    let expires = unix_now() + ttl.as_secs();
    format!(
        "{PREFIX}{token_id}.{expires}.{}",
        mac(key, token_id, expires)
    )
}

/// Prefix of access tokens; secrets start with `rd_`.
pub const PREFIX: &str = "rda.";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mac(key: &[u8], token_id: &str, expires: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("raindrop-access:{token_id}:{expires}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The live record an access token stands for: `None` when forged or
/// revoked, an error naming the fix when expired.
pub fn record<'a>(
    key: Option<&[u8]>,
    tokens: &'a [TokenRecord],
    access: &str,
) -> Result<Option<&'a TokenRecord>> {
    let mut parts = access.split('.');
    let (Some(id), Some(expires), Some(given), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ok(None);
    };
    let (Some(key), Ok(expires)) = (key, expires.parse::<u64>()) else {
        return Ok(None);
    };
    let want = mac(key, id, expires);
    if !bool::from(want.as_bytes().ct_eq(given.as_bytes())) {
        return Ok(None);
    }
    if expires <= unix_now() {
        return Err(Error::Unauthenticated(
            "access token expired: request a new one from the token endpoint".into(),
        ));
    }
    Ok(tokens.iter().find(|r| r.id == id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::Role;
    use crate::tenant::tokens::{TokenStore, create_token, generate_secret, revoke_token};

    #[test]
    fn access_tokens_stand_for_their_token_until_expiry_or_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let secret = generate_secret();
        let rec = create_token(&path, &secret, Some("acme"), Role::Read, "").unwrap();
        let store = TokenStore::open(&path).unwrap();
        let (access, p) = store
            .issue_access(&secret, Duration::from_secs(60))
            .unwrap();
        assert!(access.starts_with(PREFIX) && !access.contains(&secret));
        assert_eq!(p.project_id.as_deref(), Some("acme"));
        assert_eq!(store.authenticate(&access).unwrap(), p);
        // A changed expiry or id breaks the MAC.
        let parts: Vec<&str> = access.split('.').collect();
        let later = format!("rda.{}.{}.{}", parts[1], u64::MAX, parts[3]);
        assert!(store.authenticate(&later).is_err());
        // Expired: an error that says what to do.
        let (old, _) = store.issue_access(&secret, Duration::ZERO).unwrap();
        let err = store.authenticate(&old).unwrap_err().to_string();
        assert!(err.contains("expired"), "{err}");
        assert!(
            store
                .issue_access("rd_not_a_token_0000", Duration::from_secs(60))
                .is_err()
        );
        revoke_token(&path, &rec.id).unwrap();
        assert!(store.authenticate(&access).is_err());
    }
}
