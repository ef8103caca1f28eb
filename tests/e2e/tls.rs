//! TLS and mutual TLS on the Flight endpoint, with a real TLS client.

use std::path::Path;

use raindrop::client::RaindropClient;
use raindrop::config::ServeConfig;
use raindrop::server::ServerHandle;
use raindrop::tenant::{Role, tokens};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const TOKEN: &str = "tls-test-token-0123456789";

/// A CA, a server certificate for localhost/127.0.0.1 and a client
/// certificate, written as PEM files into `dir`.
pub fn make_pki(dir: &Path) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (name, sans) in [
        (
            "server",
            vec!["localhost".to_string(), "127.0.0.1".to_string()],
        ),
        ("client", vec!["client".to_string()]),
    ] {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(sans)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

async fn start(dir: &Path, mutual: bool) -> ServerHandle {
    let mut cfg = ServeConfig::in_dir(dir.join("data"));
    cfg.tls.tls_cert = Some(dir.join("server.pem"));
    cfg.tls.tls_key = Some(dir.join("server.key"));
    if mutual {
        cfg.tls.tls_client_ca = Some(dir.join("ca.pem"));
    }
    std::fs::create_dir_all(dir.join("data")).unwrap();
    tokens::create_token(&cfg.tokens_file(), TOKEN, Some("acme"), Role::ReadWrite, "").ok();
    ServerHandle::start(cfg).await.unwrap()
}

fn tls_endpoint(server: &ServerHandle, dir: &Path, with_identity: bool) -> Endpoint {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(dir.join("ca.pem")).unwrap(),
        ))
        .domain_name("localhost");
    if with_identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(dir.join("client.pem")).unwrap(),
            std::fs::read(dir.join("client.key")).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
}

async fn works(endpoint: Endpoint) -> bool {
    match RaindropClient::connect_endpoint(endpoint, TOKEN).await {
        Ok(mut c) => c.query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());

    let server = start(dir.path(), false).await;
    assert!(
        works(tls_endpoint(&server, dir.path(), false)).await,
        "TLS client must connect"
    );
    let plain = Endpoint::from_shared(format!("http://{}", server.addr)).unwrap();
    assert!(
        !works(plain).await,
        "plaintext client must not get through a TLS port"
    );
    server.stop().await.unwrap();

    let server = start(dir.path(), true).await;
    assert!(
        works(tls_endpoint(&server, dir.path(), true)).await,
        "client with a certificate"
    );
    assert!(
        !works(tls_endpoint(&server, dir.path(), false)).await,
        "client without a certificate"
    );
    server.stop().await.unwrap();
}
