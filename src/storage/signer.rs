//! Signing other engines' S3 reads: the storage half of the REST catalog's
//! remote signer (Iceberg's `S3V4RestSigner`). A client holding no S3
//! credential sends the request it is about to make; Raindrop signs it with
//! the warehouse's credential once the caller is allowed that object (the
//! policy lives with the catalog, [`crate::rest`]).
//!
//! This file knows S3: which object a request URI names on the warehouse's
//! endpoint and bucket, and AWS Signature V4 (reqsign, the signer opendal
//! already uses for the warehouse itself).

use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Uri};
use percent_encoding::percent_decode_str;
use reqsign_aws_v4::{Credential, RequestSigner};
use reqsign_core::{Context, SignRequest};

use super::S3Config;
use crate::error::{Error, Result};

/// Headers a client may not choose: the signer sets them.
const SIGNER_SET: &[&str] = &[
    "authorization",
    "x-amz-date",
    "x-amz-content-sha256",
    "x-amz-security-token",
];

/// Signs reads of the warehouse bucket with the warehouse's credential.
#[derive(Debug)]
pub struct S3Signer {
    signer: RequestSigner,
    credential: Credential,
    /// `host[:port]` of the S3 endpoint.
    authority: String,
    bucket: String,
    region: String,
    /// What a client needs to build the same requests (`s3.*` properties).
    endpoint: Option<String>,
    path_style: bool,
}

impl S3Signer {
    /// A signer for `bucket`, or `None` when the warehouse's credential
    /// comes from a provider chain (instance profile, web identity): only
    /// static keys (flags or `AWS_*`) can sign for others.
    pub fn new(cfg: &S3Config, bucket: &str) -> Result<Option<Self>> {
        let (Some(key), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) else {
            return Ok(None);
        };
        let region = cfg.region()?;
        let endpoint = cfg.endpoint_or_aws(&region);
        let authority = endpoint
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.as_str().to_ascii_lowercase()))
            .ok_or_else(|| {
                Error::InvalidArgument(format!("S3 endpoint {endpoint}: not an http(s) URL"))
            })?;
        Ok(Some(Self {
            signer: RequestSigner::new("s3", &region),
            credential: Credential {
                access_key_id: key.clone(),
                secret_access_key: secret.clone(),
                session_token: cfg.session_token.clone(),
                expires_in: None,
            },
            authority,
            bucket: bucket.to_string(),
            region,
            endpoint: cfg.endpoint.clone(),
            path_style: cfg.path_style,
        }))
    }

    /// The table `config` properties a client needs to address the bucket
    /// itself (the signing properties are the catalog's).
    pub fn client_properties(&self) -> Vec<(&'static str, String)> {
        let mut props = vec![("s3.region", self.region.clone())];
        if let Some(endpoint) = &self.endpoint {
            props.push(("s3.endpoint", endpoint.clone()));
        }
        if self.path_style {
            props.push(("s3.path-style-access", "true".into()));
        }
        props
    }

    /// The `s3://` location of `key` in the bucket.
    pub fn location(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// The object key `uri` reads from the warehouse bucket, decoded, or
    /// why it names none. Path style (`endpoint/bucket/key`) and virtual
    /// host style (`bucket.endpoint/key`) are both understood. A key with
    /// an empty, `.` or `..` segment or an encoded `/` is refused rather
    /// than normalised: no real Iceberg file has one, and a store's own
    /// normalisation must not be what keeps a tenant in its prefix.
    pub fn key_of(&self, uri: &Uri) -> std::result::Result<String, String> {
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_ascii_lowercase())
            .ok_or("the URI has no host")?;
        let path = uri.path();
        let key = if authority == self.authority {
            path.strip_prefix('/')
                .and_then(|p| p.strip_prefix(self.bucket.as_str()))
                .and_then(|p| p.strip_prefix('/'))
                .ok_or("the URI is not in the warehouse bucket")?
        } else if authority == format!("{}.{}", self.bucket, self.authority) {
            path.strip_prefix('/').unwrap_or(path)
        } else {
            return Err(format!(
                "the URI is not on the warehouse's S3 endpoint ({})",
                self.authority
            ));
        };
        let mut segments = Vec::new();
        for raw in key.split('/') {
            let segment = percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| "the key is not UTF-8")?;
            if segment.is_empty() || segment == "." || segment == ".." || segment.contains('/') {
                return Err(format!("the key has a disallowed segment {raw:?}"));
            }
            segments.push(segment);
        }
        Ok(segments.join("/"))
    }

    /// Sign `method uri` with the client's own `x-amz-*` headers (S3
    /// requires those signed); returns the headers to add to the request.
    /// Other headers (`Range`, `User-Agent`) stay unsigned, so a client may
    /// change them without invalidating the signature.
    pub async fn sign(
        &self,
        method: Method,
        uri: Uri,
        client_headers: &[(String, String)],
    ) -> Result<Vec<(String, String)>> {
        let (mut parts, ()) = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .map_err(|e| Error::InvalidArgument(format!("cannot sign this request: {e}")))?
            .into_parts();
        for (name, value) in client_headers {
            let name = name.to_ascii_lowercase();
            if !name.starts_with("x-amz-") || SIGNER_SET.contains(&name.as_str()) {
                continue;
            }
            let name = HeaderName::try_from(name.as_str())
                .map_err(|e| Error::InvalidArgument(format!("header {name}: {e}")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|e| Error::InvalidArgument(format!("header {name}: {e}")))?;
            parts.headers.insert(name, value);
        }
        self.sign_parts(&mut parts).await?;
        Ok(parts
            .headers
            .iter()
            .filter(|(name, _)| *name != http::header::HOST)
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
            .collect())
    }

    async fn sign_parts(&self, parts: &mut Parts) -> Result<()> {
        self.signer
            .sign_request(&Context::new(), parts, Some(&self.credential), None)
            .await
            .map_err(|e| Error::Internal(format!("S3 signing failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(path_style: bool) -> S3Signer {
        let cfg = S3Config {
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: Some("us-east-1".into()),
            path_style,
            access_key_id: Some("AK".into()),
            secret_access_key: Some("SK".into()),
            ..S3Config::default()
        };
        S3Signer::new(&cfg, "bkt").unwrap().unwrap()
    }

    #[test]
    fn keys_are_decoded_in_either_addressing_style() {
        let s = signer(true);
        let path = "http://127.0.0.1:9000/bkt/wh/t/data/project_id%3Dacme/f.parquet";
        assert_eq!(
            s.key_of(&path.parse().unwrap()).unwrap(),
            "wh/t/data/project_id=acme/f.parquet"
        );
        let vhost = "http://bkt.127.0.0.1:9000/wh/t/f.parquet";
        assert_eq!(s.key_of(&vhost.parse().unwrap()).unwrap(), "wh/t/f.parquet");
    }

    #[test]
    fn other_buckets_hosts_and_odd_segments_name_no_key() {
        let s = signer(true);
        for uri in [
            "http://127.0.0.1:9000/other/wh/t/f.parquet",
            "http://127.0.0.1:9000/bktx/wh/f",
            "http://evil:9000/bkt/wh/f",
            "http://127.0.0.1:9000/bkt/wh/t/data/project_id=acme/%2E%2E/project_id=b/f",
            "http://127.0.0.1:9000/bkt/wh/t/data/project_id=acme/../project_id=b/f",
            "http://127.0.0.1:9000/bkt/wh/t/data/project_id=acme%2F..%2Fproject_id=b/f",
            "http://127.0.0.1:9000/bkt/wh//t/f",
            "http://127.0.0.1:9000/bkt/wh/%FF/f",
            "http://127.0.0.1:9000/bkt",
        ] {
            assert!(s.key_of(&uri.parse().unwrap()).is_err(), "{uri}");
        }
    }

    #[tokio::test]
    async fn a_signature_covers_host_date_payload_and_the_clients_amz_headers() {
        let s = signer(true);
        let headers = s
            .sign(
                Method::GET,
                "http://127.0.0.1:9000/bkt/wh/f.parquet".parse().unwrap(),
                &[
                    ("Range".into(), "bytes=0-9".into()),
                    ("x-amz-checksum-mode".into(), "ENABLED".into()),
                    ("x-amz-date".into(), "19700101T000000Z".into()),
                ],
            )
            .await
            .unwrap();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        let auth = get("authorization").unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AK/"),
            "{auth}"
        );
        assert!(
            auth.contains(
                "SignedHeaders=host;x-amz-checksum-mode;x-amz-content-sha256;x-amz-date,"
            ),
            "{auth}"
        );
        assert_eq!(get("x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));
        assert_ne!(get("x-amz-date"), Some("19700101T000000Z"));
        assert_eq!(get("range"), None);
    }
}
