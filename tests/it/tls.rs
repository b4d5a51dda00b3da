//! TLS on the listeners with real clients and certificates made here (rcgen): mosquitto_pub /
//! mosquitto_sub with `--cafile` and `--cert/--key`, paho-mqtt with TLS, the Brook client and
//! CLI, HTTP. Refused, each without disturbing anything else: a client trusting another CA, a
//! client certificate from another CA, an expired client certificate, a plaintext client on
//! the TLS port, a wrong password over TLS.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common;
use crate::common::auth::*;
use crate::common::pki::{Pki, ca, pki};
use brook::client::{Client, ClientError, ClientTls};
use brook::log::BatchBuilder;
use brook::proto::{Acks, ErrorCode, TopicSettings};
use rcgen::{CertificateParams, DnType, KeyPair};

/// The security tests' users and ACL, plus TLS listeners with client certificates optional
/// and a certificate's CN as the user.
fn tls_config(dir: &Path, pki: &Pki) -> PathBuf {
    let config = secured_config(dir, None);
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&format!(
        "[listeners]\nnative_tls = \"127.0.0.1:0\"\nmqtt_tls = \"127.0.0.1:0\"\nhttp_tls = \"127.0.0.1:0\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\ncert_cn_as_username = true\n",
        pki.server_cert, pki.server_key, pki.ca
    ));
    std::fs::write(&config, text).expect("config");
    config
}

fn field(log: &str, name: &str) -> String {
    log.split(name)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {name} in {log}"))
        .to_string()
}

fn mosquitto_pub(port: &str, args: &[&str]) -> Output {
    require("mosquitto_pub", "apt-get install mosquitto-clients")
        .args(["-h", "127.0.0.1", "-p", port, "-q", "1", "-t"])
        .args(args)
        .output()
        .expect("mosquitto_pub")
}

/// MQTT over TLS: password and certificate logins with mosquitto and paho; every kind of bad
/// TLS client is refused and the listener keeps serving.
#[test]
fn mqtt_over_tls_with_mosquitto_and_paho() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path());
    let config = tls_config(dir.path(), &pki);
    let (mut server, addrs) =
        common::serve_with(&dir.path().join("data"), Some(&config), "127.0.0.1:0");
    let log = addrs.log_tail();
    let tls_port = port(&field(&log, "mqtt_tls="));
    let ca = pki.ca.to_str().expect("utf-8");
    let (cert, key) = (
        pki.client_cert.to_str().expect("utf-8"),
        pki.client_key.to_str().expect("utf-8"),
    );
    ok(
        mosquitto_pub(
            &tls_port,
            &[
                "public/a",
                "-m",
                "pw-over-tls",
                "-u",
                "ops",
                "-P",
                "pw-ops",
                "--cafile",
                ca,
            ],
        ),
        "mosquitto_pub over TLS with a password",
    );
    ok(
        mosquitto_pub(
            &tls_port,
            &[
                "sensors/sensor-1/b",
                "-m",
                "cert-over-tls",
                "--cafile",
                ca,
                "--cert",
                cert,
                "--key",
                key,
            ],
        ),
        "mosquitto_pub over TLS with sensor-1's certificate",
    );
    let refused: Vec<(&str, Output)> = vec![
        (
            "trusting another CA",
            mosquitto_pub(
                &tls_port,
                &[
                    "x",
                    "-m",
                    "x",
                    "-u",
                    "ops",
                    "-P",
                    "pw-ops",
                    "--cafile",
                    pki.rogue_ca.to_str().expect("utf-8"),
                ],
            ),
        ),
        (
            "a certificate from another CA",
            mosquitto_pub(
                &tls_port,
                &[
                    "x",
                    "-m",
                    "x",
                    "--cafile",
                    ca,
                    "--cert",
                    pki.rogue_cert.to_str().expect("utf-8"),
                    "--key",
                    pki.rogue_key.to_str().expect("utf-8"),
                ],
            ),
        ),
        (
            "an expired certificate",
            mosquitto_pub(
                &tls_port,
                &[
                    "x",
                    "-m",
                    "x",
                    "--cafile",
                    ca,
                    "--cert",
                    pki.expired_cert.to_str().expect("utf-8"),
                    "--key",
                    pki.expired_key.to_str().expect("utf-8"),
                ],
            ),
        ),
        (
            "plaintext on the TLS port",
            mosquitto_pub(&tls_port, &["x", "-m", "x", "-u", "ops", "-P", "pw-ops"]),
        ),
        (
            "a wrong password over TLS",
            mosquitto_pub(
                &tls_port,
                &["x", "-m", "x", "-u", "ops", "-P", "nope", "--cafile", ca],
            ),
        ),
    ];
    for (what, out) in &refused {
        assert!(!out.status.success(), "{what}: accepted");
    }
    // Still serving: paho over TLS, password and certificate.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/security/paho_acl.py");
    let out = Command::new(python())
        .arg(&script)
        .args([
            "--port", &tls_port, "--ca", ca, "--cert", cert, "--key", key, "tls",
        ])
        .output()
        .expect("paho");
    assert!(
        out.status.success(),
        "paho tls: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        addrs.log_tail()
    );
    // Both mosquitto messages were stored, nothing from the refused ones.
    let dump = ok(
        common::brook()
            .args([
                "consume",
                "--broker",
                &addrs.native,
                "--topic",
                "mqtt",
                "--user",
                "ops",
            ])
            .env("BROOK_PASSWORD", "pw-ops")
            .output()
            .expect("consume"),
        "brook consume",
    );
    assert_eq!(dump, "pw-over-tls\ncert-over-tls\nover-tls\n");
    common::mirror::stop(&mut server);
}

fn code_of(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Server { code, .. } => Some(*code),
        _ => None,
    }
}

/// The Brook client and CLI over TLS (password, and certificate as the login); HTTP over TLS;
/// the wrong CA, a foreign client certificate and plaintext on the TLS port are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_and_http_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path());
    let file = tls_config(dir.path(), &pki);
    let mut config = common::server_config(&dir.path().join("data"));
    let loaded = brook::config::Config::load(&file).expect("config");
    config.auth = loaded.auth;
    config.tls = loaded.tls;
    config.listeners.native_tls = "127.0.0.1:0".into();
    config.listeners.http_tls = "127.0.0.1:0".into();
    let server = brook::serve::start(config).await.expect("start");
    let addr = server.native_tls_addr.expect("native_tls").to_string();

    let trust = ClientTls::new(&pki.ca, None).expect("client tls");
    let ops = Client::connect_secure(&addr, "ops", Some(&trust), Some(("ops", b"pw-ops")))
        .await
        .expect("ops over TLS");
    ops.create_topic("telemetry", TopicSettings::default())
        .await
        .expect("create");
    let e = Client::connect_secure(&addr, "x", Some(&trust), Some(("ops", b"nope")))
        .await
        .err()
        .expect("wrong password");
    assert_eq!(code_of(&e), Some(ErrorCode::AuthenticationFailed), "{e}");

    // sensor-1 by certificate: no Authenticate, and its ACL holds.
    let mine = ClientTls::new(&pki.ca, Some((&pki.client_cert, &pki.client_key))).expect("tls");
    let sensor = Client::connect_secure(&addr, "dev1", Some(&mine), None)
        .await
        .expect("certificate login");
    let mut batch = BatchBuilder::new();
    batch.push(1, None, Some(&b"by-cert"[..]), &[]);
    sensor
        .produce("telemetry", Some(0), None, Acks::Durable, &batch)
        .await
        .expect("sensor-1 may produce to telemetry");
    let e = sensor
        .create_topic("mine", TopicSettings::default())
        .await
        .expect_err("not admin");
    assert_eq!(code_of(&e), Some(ErrorCode::NotAuthorized), "{e}");

    for (what, tls) in [
        (
            "another CA",
            ClientTls::new(&pki.rogue_ca, None).expect("tls"),
        ),
        (
            "a foreign certificate",
            ClientTls::new(&pki.ca, Some((&pki.rogue_cert, &pki.rogue_key))).expect("tls"),
        ),
        (
            "an expired certificate",
            ClientTls::new(&pki.ca, Some((&pki.expired_cert, &pki.expired_key))).expect("tls"),
        ),
    ] {
        // A refused client certificate may only show at the first read (TLS 1.3).
        let r = match Client::connect_secure(&addr, "bad", Some(&tls), None).await {
            Err(e) => Err(e),
            Ok(c) => c.list_topics().await.map(|_| ()),
        };
        assert!(r.is_err(), "{what}: accepted");
    }
    let e = tokio::time::timeout(
        Duration::from_secs(20),
        Client::connect_as(&addr, "plain", Some(("ops", b"pw-ops"))),
    )
    .await
    .expect("a plaintext client is answered or cut off, not left hanging")
    .err()
    .expect("plaintext on the TLS port");
    assert!(code_of(&e).is_none(), "{e}");

    // The CLI over TLS.
    let out = tokio::task::spawn_blocking({
        let (addr, ca) = (addr.clone(), pki.ca.clone());
        move || {
            common::brook()
                .args(["topics", "--broker", &addr, "--user", "ops", "--tls-ca"])
                .arg(&ca)
                .arg("list")
                .env("BROOK_PASSWORD", "pw-ops")
                .output()
                .expect("brook topics list")
        }
    })
    .await
    .expect("join");
    assert_eq!(ok(out, "brook topics list over TLS"), "telemetry\n");

    // HTTP over TLS, with the token.
    let http_addr = server.http_tls_addr.expect("http_tls");
    let connector = {
        let cfg = rustls::ClientConfig::builder_with_provider(brook::net::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls_roots(&pki.ca))
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
    };
    let tcp = tokio::net::TcpStream::connect(http_addr)
        .await
        .expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut s = connector.connect(name, tcp).await.expect("https");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(
        format!("GET /api/topics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("request");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("telemetry"), "{answer}");
    server.stop().await.expect("stop");
}

fn rustls_roots(ca: &Path) -> rustls::RootCertStore {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("pem")).expect("add");
    }
    roots
}

/// The CN of a certificate is found in its subject (what `cert_cn_as_username` logs in as).
#[test]
fn subject_cn_is_read_from_certificates() {
    let root = ca("Brook test CA");
    assert_eq!(
        brook::net::tls::subject_cn(root.0.der()).as_deref(),
        Some("Brook test CA")
    );
    let mut p = CertificateParams::new(vec!["a.example".to_string()]).expect("params");
    p.distinguished_name.push(DnType::OrganizationName, "Acme");
    p.distinguished_name.push(DnType::CommonName, "gateway-7");
    p.distinguished_name.push(DnType::CountryName, "DE");
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &root.0, &root.1).expect("sign");
    assert_eq!(
        brook::net::tls::subject_cn(cert.der()).as_deref(),
        Some("gateway-7")
    );
    assert_eq!(brook::net::tls::subject_cn(b"\x30\x03\x02\x01"), None);
}

/// A QoS 1 stream over TLS reaches its subscriber whole: 100,000 messages from 8 publishers
/// through `brook bench mqtt --tls`, a subscriber slower than the publishers, so Brook's
/// writes meet a full socket. (Before every write was flushed, encrypted bytes could stay in
/// rustls's buffer while Brook waited for PUBACKs of the very messages stuck there: the
/// subscriber stalled in 3 runs of 5.)
#[test]
fn a_qos1_stream_over_tls_arrives_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    pki(dir.path());
    let out = common::brook()
        .current_dir(dir.path())
        .args([
            "bench",
            "mqtt",
            "--qos",
            "1",
            "--messages",
            "100000",
            "--json",
            "--tls",
        ])
        .arg(dir.path())
        .output()
        .expect("brook bench mqtt");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["tls"], true);
    assert_eq!(report["delivered"], 100_000, "{report}");
}

/// The README's certificate recipe ("Securing Brook") makes certificates Brook accepts: its
/// `openssl` lines run as written (the server's address made 127.0.0.1), Brook presents the
/// server certificate, and mosquitto_pub logs in over TLS with the device certificate.
#[test]
fn the_readme_certificate_recipe_works() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README");
    let start = readme
        .find("Certificates for a fleet, with OpenSSL:")
        .expect("the recipe in the README");
    let block = &readme[start..];
    let block = &block[block.find("```sh\n").expect("sh block") + 6..];
    let recipe = &block[..block.find("mosquitto_pub").expect("recipe ends")];
    assert!(recipe.contains("openssl x509"), "{recipe}");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = recipe.replace("192.168.1.10", "127.0.0.1");
    ok(
        require("openssl", "apt-get install openssl")
            .arg("version")
            .output()
            .expect("openssl"),
        "openssl version",
    );
    ok(
        Command::new("bash")
            .args(["-euc", &script])
            .current_dir(dir.path())
            .output()
            .expect("bash"),
        "the README's openssl lines",
    );
    let d = dir.path();
    let config = d.join("brook.toml");
    std::fs::write(
        &config,
        format!(
            "[listeners]\nmqtt_tls = \"127.0.0.1:0\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\nrequire_client_cert = true\ncert_cn_as_username = true\n",
            d.join("server.pem"),
            d.join("server.key"),
            d.join("ca.pem")
        ),
    )
    .expect("config");
    let (_server, addrs) = common::serve_with(&d.join("data"), Some(&config), "127.0.0.1:0");
    let port = common::auth::port(&common::log_field(&addrs.listening, "mqtt_tls="));
    let out = mosquitto_pub(
        &port,
        &[
            "sensors/sensor-17/temp",
            "-m",
            "21.5",
            "--cafile",
            d.join("ca.pem").to_str().expect("utf-8"),
            "--cert",
            d.join("sensor-17.pem").to_str().expect("utf-8"),
            "--key",
            d.join("sensor-17.key").to_str().expect("utf-8"),
        ],
    );
    ok(out, "mosquitto_pub with the recipe's certificates");
}
