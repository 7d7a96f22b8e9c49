//! TLS (`SPOOL_TLS_CERT`/`SPOOL_TLS_KEY`) with a certificate made in the test: HTTP/1.1
//! and HTTP/2 chosen by ALPN on one port, many SSE streams over one TLS connection, a
//! WebSocket over TLS HTTP/2, start-up errors that name the bad file, and clients that
//! open a socket and never handshake.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use spool::ServeConfig;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use crate::helpers::*;
use crate::http2::{H2, get, h2_connect, h2_text, post_json};

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as PEM files.
struct Cert {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    pem: String,
}

fn make_cert() -> Cert {
    let dir = tempfile::tempdir().unwrap();
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let pem = made.cert.pem();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &pem).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    Cert {
        dir,
        cert,
        key,
        pem,
    }
}

/// A mock-backed server speaking TLS with `cert`, `tweak` applied.
async fn spawn_tls(cert: &Cert, tweak: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let (c, k) = (cert.cert.clone(), cert.key.clone());
    spawn_with(move |config| {
        config.tls.cert = Some(c);
        config.tls.key = Some(k);
        tweak(config);
    })
    .await
}

fn https(app: &TestApp) -> String {
    format!("https://localhost:{}", app.addr.port())
}

/// A reqwest client that trusts `cert` (and nothing else).
fn client(cert: &Cert) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem.as_bytes()).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], 0).into())
}

/// A TLS connection to `app` offering `alpn`, trusting `cert`.
async fn tls_connect(
    app: &TestApp,
    cert: &Cert,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert.pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(
        DEADLINE,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("the TLS handshake hung")
    .unwrap()
}

/// An HTTP/2 connection over TLS, negotiated by ALPN.
async fn h2_over_tls(app: &TestApp, cert: &Cert) -> H2 {
    let tls = tls_connect(app, cert, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2_connect(tls).await
}

#[tokio::test]
async fn http1_over_tls_streams_sse_to_done() {
    let cert = make_cert();
    let app = spawn_tls(&cert, |_| {}).await;
    let client = client(&cert).http1_only().build().unwrap();
    let r = client
        .post(format!("{}/v1/streams", https(&app)))
        .json(&json!({"prompt": "hi", "max_tokens": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = client
        .get(format!("{}/v1/streams/{id}/events", https(&app)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    let body = tokio::time::timeout(DEADLINE, r.text())
        .await
        .expect("the stream did not end")
        .unwrap();
    let events = parse_sse(&body);
    let seqs: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    let text: String = events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| e.json()["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, " tok1 tok2 tok3 tok4 tok5");
    assert_eq!(events.last().unwrap().event, "done");

    // Cleartext on the TLS port gets no HTTP answer.
    let plain = reqwest::get(format!("http://{}/healthz", app.addr)).await;
    assert!(plain.is_err(), "{plain:?}");
}

#[tokio::test]
async fn http2_over_tls_is_chosen_by_alpn() {
    let cert = make_cert();
    let app = spawn_tls(&cert, |_| {}).await;
    // No prior knowledge: the client offers h2 and http/1.1, the server picks h2.
    let client = client(&cert).build().unwrap();
    let r = client
        .get(format!("{}/healthz", https(&app)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    // A client that offers only http/1.1 gets it.
    let tls = tls_connect(&app, &cert, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn many_sse_streams_over_one_tls_http2_connection() {
    let cert = make_cert();
    let app = spawn_tls(&cert, |c| c.mock.rate = 200.0).await;
    let h2 = h2_over_tls(&app, &cert).await;
    let base = https(&app);
    let mut ids = Vec::new();
    for _ in 0..20 {
        let body = json!({"prompt": "x", "max_tokens": 20});
        let (status, body) = h2_text(&h2, post_json(format!("{base}/v1/streams"), body)).await;
        assert_eq!(status, 201, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let reads = ids
        .iter()
        .map(|id| h2_text(&h2, get(format!("{base}/v1/streams/{id}/events"))));
    let bodies = futures_util::future::join_all(reads).await;
    for (status, body) in bodies {
        assert_eq!(status, 200);
        let events = parse_sse(&body);
        let seqs: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
        assert_eq!(seqs, (1..=22).collect::<Vec<_>>());
        assert_eq!(events.last().unwrap().event, "done");
    }
}

#[tokio::test]
async fn a_websocket_over_tls_http2() {
    let cert = make_cert();
    let app = spawn_tls(&cert, |_| {}).await;
    let h2 = h2_over_tls(&app, &cert).await;
    crate::http2::websocket_and_sse_share_a_connection(&h2, &https(&app)).await;
}

#[tokio::test]
async fn a_client_that_never_handshakes_blocks_no_one() {
    let cert = make_cert();
    let mut app = spawn_tls(&cert, |c| {
        c.tls.handshake_timeout = Duration::from_secs(3600)
    })
    .await;
    // Sockets that say nothing: their handshakes wait in their own tasks.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let client = client(&cert).build().unwrap();
    let r = tokio::time::timeout(
        DEADLINE,
        client.get(format!("{}/healthz", https(&app))).send(),
    )
    .await
    .expect("a silent client blocked another one")
    .unwrap();
    assert_eq!(r.status(), 200);
    // And they are still connected: nothing gave up on them.
    for socket in &silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(50), socket.peek(&mut byte)).await;
        assert!(read.is_err(), "a silent socket was closed: {read:?}");
    }
    // A shutdown does not wait for their handshakes: it closes them.
    app.shutdown().await;
    for mut socket in silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(DEADLINE, socket.read(&mut byte))
            .await
            .expect("a silent socket outlived the shutdown");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}

#[tokio::test]
async fn a_client_that_never_handshakes_is_dropped_after_the_timeout() {
    let cert = make_cert();
    // One connection slot: the silent client takes it, the next waits for it.
    let app = spawn_tls(&cert, |c| {
        c.tls.handshake_timeout = Duration::from_millis(200);
        c.server.max_connections = 1;
    })
    .await;
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(DEADLINE, silent.read(&mut byte))
        .await
        .expect("the silent client was never dropped");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Its slot is free again.
    let client = client(&cert).build().unwrap();
    let r = tokio::time::timeout(
        DEADLINE,
        client.get(format!("{}/healthz", https(&app))).send(),
    )
    .await
    .expect("the slot was not freed")
    .unwrap();
    assert_eq!(r.status(), 200);
}

/// Runs the binary with `env`, expecting it to fail at start-up with a message that
/// holds each of `needles`.
async fn start_fails_saying(env: &[(&str, &str)], needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_spool"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SPOOL_ADDR", "127.0.0.1:0")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("spool.db").display()),
        )
        .env("SPOOL_BACKEND", "mock")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE, out)
        .await
        .expect("the server started instead of failing")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{env:?}: {needle:?} not in {stderr}"
        );
    }
}

#[tokio::test]
async fn a_bad_certificate_or_key_stops_the_start_naming_the_file() {
    let cert = make_cert();
    let other = make_cert();
    let (cert_path, key_path) = (cert.cert.to_str().unwrap(), cert.key.to_str().unwrap());
    let other_key = other.key.to_str().unwrap();
    let missing = cert.dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let garbage = cert.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let garbage = garbage.to_str().unwrap();
    let (cert_var, key_var) = ("SPOOL_TLS_CERT", "SPOOL_TLS_KEY");

    start_fails_saying(&[(cert_var, missing), (key_var, key_path)], &[missing]).await;
    start_fails_saying(&[(cert_var, cert_path), (key_var, missing)], &[missing]).await;
    start_fails_saying(
        &[(cert_var, garbage), (key_var, key_path)],
        &[garbage, "no PEM CERTIFICATE"],
    )
    .await;
    // The certificate where the key should be.
    start_fails_saying(
        &[(cert_var, cert_path), (key_var, cert_path)],
        &[cert_path, "no PEM private key"],
    )
    .await;
    // Another certificate's key.
    start_fails_saying(
        &[(cert_var, cert_path), (key_var, other_key)],
        &[cert_path, other_key, "cannot be used together"],
    )
    .await;
    // Only one of the two.
    start_fails_saying(&[(cert_var, cert_path)], &[cert_path, key_var]).await;
    start_fails_saying(&[(key_var, key_path)], &[key_path, cert_var]).await;
}

#[tokio::test]
async fn the_binary_takes_its_certificate_from_the_environment() {
    let cert = make_cert();
    let db = cert.dir.path().join("spool.db");
    let env = [
        ("SPOOL_TLS_CERT", cert.cert.to_str().unwrap()),
        ("SPOOL_TLS_KEY", cert.key.to_str().unwrap()),
    ];
    let server = crate::process::start(&db, &env, DEADLINE);
    let port = server.base.rsplit(':').next().unwrap();
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let client = client(&cert).build().unwrap();
    let r = client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
}
