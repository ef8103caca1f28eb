//! Vended S3 credentials: short-lived keys from AWS STS `AssumeRole`, with a
//! session policy that allows `s3:GetObject` on given key prefixes only.
//! This is how engines that cannot sign remotely (DuckDB, Daft) read a
//! tenant's files on S3 without ever holding a key that reaches another
//! tenant's: AWS intersects the role's permissions with the session policy.
//!
//! Off unless `--s3-vend-role-arn` names the role to assume; the warehouse's
//! own key must be allowed to assume it. Credentials last [`LIFETIME`] (the
//! STS minimum) and are reused for half of it per set of prefixes, so a busy
//! tenant costs one STS call per 7.5 minutes, not one per `loadTable`.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Uri};
use moka::sync::Cache;
use reqsign_aws_v4::{Credential, RequestSigner};
use reqsign_core::{Context, SignRequest};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::S3Config;
use crate::error::{Error, Result};

/// How long vended credentials last: STS's minimum.
pub const LIFETIME: Duration = Duration::from_secs(900);
/// Sets of prefixes whose credentials are kept for reuse.
const CACHED: u64 = 10_000;

/// Keys for reading some prefixes of the warehouse bucket.
#[derive(Debug)]
pub struct Vended {
    /// Temporary access key id (`ASIA…`).
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
    /// The session token that carries the policy.
    pub session_token: String,
    /// Expiry, Unix milliseconds (the spec's `s3.session-token-expires-at-ms`).
    pub expires_at_ms: i64,
}

/// Obtains [`Vended`] credentials from STS.
#[derive(Debug)]
pub struct S3Vendor {
    role_arn: String,
    /// `https://sts.<region>.amazonaws.com`, or `--s3-sts-endpoint`.
    sts: String,
    bucket: String,
    /// `arn:<partition>:s3:::` of the bucket's region.
    arn_prefix: &'static str,
    signer: RequestSigner,
    credential: Credential,
    http: reqwest::Client,
    cache: Cache<Vec<String>, Arc<Vended>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumeRoleResponse {
    assume_role_result: AssumeRoleResult,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumeRoleResult {
    credentials: StsCredentials,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

impl S3Vendor {
    /// A vendor for `bucket`, or `None` when no role is configured. Needs
    /// static keys: they sign the STS call.
    pub fn new(cfg: &S3Config, bucket: &str) -> Result<Option<Self>> {
        let Some(role_arn) = cfg.vend_role_arn.clone() else {
            return Ok(None);
        };
        let (Some(key), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) else {
            return Err(Error::InvalidArgument(
                "--s3-vend-role-arn needs static S3 keys (--s3-access-key-id / AWS_ACCESS_KEY_ID) to call STS".into(),
            ));
        };
        let region = cfg.region()?;
        let arn_prefix = if region.starts_with("cn-") {
            "arn:aws-cn:s3:::"
        } else if region.starts_with("us-gov-") {
            "arn:aws-us-gov:s3:::"
        } else {
            "arn:aws:s3:::"
        };
        let sts = cfg
            .sts_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
        super::s3::use_ring_for_tls();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Internal(format!("STS client: {e}")))?;
        Ok(Some(Self {
            role_arn,
            sts: sts.trim_end_matches('/').to_string(),
            bucket: bucket.to_string(),
            arn_prefix,
            signer: RequestSigner::new("sts", &region),
            credential: Credential {
                access_key_id: key.clone(),
                secret_access_key: secret.clone(),
                session_token: cfg.session_token.clone(),
                expires_in: None,
            },
            http,
            cache: Cache::builder()
                .max_capacity(CACHED)
                .time_to_live(LIFETIME / 2)
                .build(),
        }))
    }

    /// The session policy: `s3:GetObject` on each key prefix, nothing else.
    pub fn policy(&self, key_prefixes: &[String]) -> String {
        let resources: Vec<String> = key_prefixes
            .iter()
            .map(|p| format!("{}{}/{p}*", self.arn_prefix, self.bucket))
            .collect();
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": resources}],
        })
        .to_string()
    }

    /// Credentials that read exactly `key_prefixes` of the bucket; `who`
    /// names the STS session (it appears in CloudTrail).
    pub async fn vend(&self, who: &str, key_prefixes: &[String]) -> Result<Arc<Vended>> {
        let mut key = key_prefixes.to_vec();
        key.sort();
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit);
        }
        let called = self.assume_role(who, &key).await;
        crate::metrics::metrics()
            .sts_calls
            .get_or_create(&crate::metrics::outcome(called.is_ok()))
            .inc();
        let vended = Arc::new(called?);
        self.cache.insert(key, vended.clone());
        Ok(vended)
    }

    async fn assume_role(&self, who: &str, key_prefixes: &[String]) -> Result<Vended> {
        let session: String = format!("raindrop-{who}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", "AssumeRole")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", &self.role_arn)
            .append_pair("RoleSessionName", &session)
            .append_pair("DurationSeconds", &LIFETIME.as_secs().to_string())
            .append_pair("Policy", &self.policy(key_prefixes))
            .finish();
        let uri: Uri = format!("{}/?{query}", self.sts)
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("STS endpoint {}: {e}", self.sts)))?;
        let (mut parts, ()) = http::Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header("x-amz-content-sha256", hex::encode(Sha256::digest(b"")))
            .body(())
            .map_err(|e| Error::Internal(format!("STS request: {e}")))?
            .into_parts();
        self.signer
            .sign_request(&Context::new(), &mut parts, Some(&self.credential), None)
            .await
            .map_err(|e| Error::Internal(format!("signing the STS request: {e}")))?;
        let unavailable =
            |e: String| Error::Unavailable(format!("STS AssumeRole at {}: {e}", self.sts));
        let response = self
            .http
            .get(parts.uri.to_string())
            .headers(parts.headers)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !status.is_success() {
            return Err(unavailable(format!("{status}: {body}")));
        }
        let parsed: AssumeRoleResponse = quick_xml::de::from_str(&body)
            .map_err(|e| unavailable(format!("unreadable answer: {e}")))?;
        let c = parsed.assume_role_result.credentials;
        let expires = chrono::DateTime::parse_from_rfc3339(&c.expiration)
            .map_err(|e| unavailable(format!("expiration {}: {e}", c.expiration)))?;
        Ok(Vended {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: c.session_token,
            expires_at_ms: expires.timestamp_millis(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_policy_allows_reading_the_prefixes_only() {
        let cfg = S3Config {
            region: Some("eu-west-1".into()),
            access_key_id: Some("AK".into()),
            secret_access_key: Some("SK".into()),
            vend_role_arn: Some("arn:aws:iam::123456789012:role/reader".into()),
            ..S3Config::default()
        };
        let vendor = S3Vendor::new(&cfg, "bkt").unwrap().unwrap();
        let policy: serde_json::Value = serde_json::from_str(&vendor.policy(&[
            "wh/t/data/project_id=acme/".into(),
            "wh/t/tenant-metadata/project_id=acme/".into(),
        ]))
        .unwrap();
        let statements = policy["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 1);
        assert_eq!(statements[0]["Effect"], "Allow");
        assert_eq!(statements[0]["Action"], "s3:GetObject");
        assert_eq!(
            statements[0]["Resource"],
            serde_json::json!([
                "arn:aws:s3:::bkt/wh/t/data/project_id=acme/*",
                "arn:aws:s3:::bkt/wh/t/tenant-metadata/project_id=acme/*"
            ])
        );
    }

    #[test]
    fn a_role_without_static_keys_is_a_configuration_error() {
        let cfg = S3Config {
            region: Some("us-east-1".into()),
            vend_role_arn: Some("arn:aws:iam::123456789012:role/reader".into()),
            ..S3Config::default()
        };
        let err = S3Vendor::new(&cfg, "bkt").unwrap_err().to_string();
        assert!(err.contains("static S3 keys"), "{err}");
        assert!(
            S3Vendor::new(&S3Config::default(), "bkt")
                .unwrap()
                .is_none()
        );
    }
}
