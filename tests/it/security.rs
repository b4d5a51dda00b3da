//! Logins and ACLs on every front end, with real clients: paho-mqtt and mosquitto_pub/sub
//! against the binary, the Brook client against an in-process server, Mosquitto's own
//! `mosquitto_passwd` and broker for the users-file format, the HTTP token, SIGHUP reloads,
//! and the refusal to listen on the network without a login.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brook::client::{Client, ClientError, Producer};
use brook::log::{BatchBuilder, Record};
use brook::proto::{Acks, ErrorCode, TopicSettings};

use crate::common;
use crate::common::auth::*;

fn paho(port: &str, scenario: &str, log: &common::Addrs) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/security/paho_acl.py");
    let out = Command::new(python())
        .arg(&script)
        .args(["--port", port, scenario])
        .output()
        .expect("run paho_acl.py");
    assert!(
        out.status.success(),
        "paho {scenario}: {}{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log.log_tail()
    );
}

/// MQTT logins (wrong password, unknown user, a will outside the ACL) and ACLs (publish with
/// 5.0 reason codes and 3.1.1 silent drops, subscriptions partly inside a rule, anonymous
/// clients) with paho-mqtt; mosquitto_pub with `-u/-P`; nothing refused reaches the log; the
/// refusals are counted; the HTTP API wants its token, /healthz and /metrics do not.
#[test]
fn mqtt_logins_and_acl_with_paho_and_mosquitto_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = secured_config(dir.path(), Some(true));
    let (mut server, addrs) =
        common::serve_with(&dir.path().join("data"), Some(&config), "127.0.0.1:0");
    let p = port(&addrs.mqtt);
    paho(&p, "logins", &addrs);
    paho(&p, "acl", &addrs);

    let pub_as = |user: &str, password: &str, topic: &str| {
        require("mosquitto_pub", "apt-get install mosquitto-clients")
            .args(["-h", "127.0.0.1", "-p", &p, "-q", "1", "-i", "dev1"])
            .args([
                "-u",
                user,
                "-P",
                password,
                "-t",
                topic,
                "-m",
                "from-mosquitto",
            ])
            .output()
            .expect("mosquitto_pub")
    };
    ok(
        pub_as("sensor-1", "pw-sensor", "sensors/sensor-1/m"),
        "mosquitto_pub -u sensor-1",
    );
    let refused = pub_as("sensor-1", "wrong", "sensors/sensor-1/m");
    assert!(!refused.status.success(), "a wrong password was accepted");
    let said = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(
        said.contains("password") || said.contains("not authori"),
        "mosquitto_pub's complaint: {said}"
    );

    // Nothing a rule refused was stored: read the whole log topic back as ops.
    let dump = ok(
        common::brook()
            .args(["consume", "--broker", &addrs.native, "--topic", "mqtt"])
            .args(["--user", "ops"])
            .env("BROOK_PASSWORD", "pw-ops")
            .output()
            .expect("brook consume"),
        "brook consume --user ops",
    );
    assert!(
        !dump.contains("denied"),
        "refused messages were stored:\n{dump}"
    );
    for want in ["v5-allowed-1", "v3-allowed-2", "v5-cmd", "from-mosquitto"] {
        assert!(dump.contains(want), "{want} missing from the log:\n{dump}");
    }

    // Every refusal counted: publishes (3 per version, 1 anonymous, 2 wills), subscriptions
    // (2 per version, 1 anonymous), logins (2 per version, the wrong mosquitto_pub).
    let metrics = http(&addrs.http, "/metrics", None).expect("metrics without a token");
    assert_eq!(
        metric(&metrics, "brook_auth_denied_total{op=\"publish\"} "),
        9
    );
    assert_eq!(
        metric(&metrics, "brook_auth_denied_total{op=\"subscribe\"} "),
        5
    );
    assert_eq!(
        metric(
            &metrics,
            "brook_auth_logins_total{outcome=\"bad_credentials\"} "
        ),
        5
    );
    assert!(http(&addrs.http, "/healthz", None).is_ok());
    // Every page but /healthz needs the token: the status page and each JSON document.
    for path in ["/", "/api/status", "/api/topics", "/api/mirrors"] {
        let e = http(&addrs.http, path, None).expect_err("the API without a token");
        assert!(e.contains("401"), "{path}: {e}");
        let e = http(&addrs.http, path, Some("wrong-token-0123456789")).expect_err("bad");
        assert!(e.contains("401"), "{path}: {e}");
    }
    let topics = http(&addrs.http, "/api/topics", Some(TOKEN)).expect("the API with its token");
    assert!(topics.contains("\"mqtt\""), "{topics}");
    let status = http(&addrs.http, "/api/status", Some(TOKEN)).expect("the status with its token");
    assert!(status.contains("\"mqtt\""), "{status}");
    let page = http(&addrs.http, "/", Some(TOKEN)).expect("the page with its token");
    assert!(page.contains("<title>Brook</title>"), "{page}");
    common::mirror::stop(&mut server);
}

fn record(v: &str) -> Record {
    Record {
        timestamp: 1_700_000_000_000,
        key: None,
        value: Some(v.as_bytes().to_vec()),
        headers: vec![],
    }
}

fn code_of(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Server { code, .. } => Some(*code),
        _ => None,
    }
}

/// The native protocol: no login where one is required, a wrong password and an unknown user
/// are refused with AuthenticationFailed and the connection closes; a logged-in user gets
/// NotAuthorized for what the ACL does not grant and the connection goes on; admin requests
/// need admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_logins_and_acl_with_the_brook_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = secured_config(dir.path(), None);
    let mut config = common::server_config(&dir.path().join("data"));
    config.auth = brook::config::Config::load(&file).expect("config").auth;
    let server = brook::serve::start(config).await.expect("start");
    let addr = server.native_addr.expect("native listener").to_string();

    let anonymous = Client::connect(&addr, "anon").await.expect("handshake");
    let e = anonymous
        .list_topics()
        .await
        .expect_err("anonymous refused");
    assert_eq!(code_of(&e), Some(ErrorCode::AuthenticationFailed), "{e}");
    let e = anonymous.list_topics().await.expect_err("closed after");
    assert!(matches!(e, ClientError::Closed(_)), "{e}");

    for (user, password) in [("ops", "wrong"), ("nobody", "pw-ops"), ("sensor-1", "")] {
        let e = Client::connect_as(&addr, "c", Some((user, password.as_bytes())))
            .await
            .err()
            .unwrap_or_else(|| panic!("{user}/{password} logged in"));
        assert_eq!(code_of(&e), Some(ErrorCode::AuthenticationFailed), "{e}");
    }

    let ops = Arc::new(
        Client::connect_as(&addr, "ops", Some(("ops", b"pw-ops")))
            .await
            .expect("ops logs in"),
    );
    for t in ["telemetry", "other"] {
        ops.create_topic(t, TopicSettings::default())
            .await
            .expect("ops creates topics");
    }
    let sensor = Client::connect_as(&addr, "dev1", Some(("sensor-1", b"pw-sensor")))
        .await
        .expect("sensor logs in (a mosquitto_passwd line)");
    let mut batch = BatchBuilder::new();
    batch.push(1_700_000_000_000, None, Some(&b"r1"[..]), &[]);
    sensor
        .produce("telemetry", Some(0), None, Acks::Durable, &batch)
        .await
        .expect("sensor may produce to telemetry");
    let e = sensor
        .produce("other", Some(0), None, Acks::Durable, &batch)
        .await
        .expect_err("produce to other");
    assert_eq!(code_of(&e), Some(ErrorCode::NotAuthorized), "{e}");
    assert!(e.to_string().contains("produce \"other\""), "{e}");
    let e = sensor
        .fetch("other", 0, 0, 1 << 20, 0, Duration::ZERO)
        .await
        .expect_err("fetch other");
    assert_eq!(code_of(&e), Some(ErrorCode::NotAuthorized), "{e}");
    for e in [
        sensor
            .create_topic("mine", TopicSettings::default())
            .await
            .expect_err("create"),
        sensor.delete_topic("telemetry").await.expect_err("delete"),
        sensor.list_groups().await.expect_err("list groups"),
    ] {
        assert_eq!(code_of(&e), Some(ErrorCode::NotAuthorized), "{e}");
    }
    // The connection is still good: a second record, read back.
    sensor
        .produce("telemetry", Some(0), None, Acks::Durable, &batch)
        .await
        .expect("still producing");
    let fetched = sensor
        .fetch("telemetry", 0, 0, 1 << 20, 0, Duration::ZERO)
        .await
        .expect("sensor may consume telemetry");
    assert_eq!(fetched.records(0).expect("records").len(), 2);
    let e = sensor
        .login("ops", b"pw-ops")
        .await
        .expect_err("late login");
    assert_eq!(code_of(&e), Some(ErrorCode::InvalidRequest), "{e}");

    // Ops may do anything a producer does, anywhere.
    let mut p = Producer::new(Arc::clone(&ops), "other", Acks::Durable)
        .await
        .expect("producer");
    p.send(None, &record("x")).await.expect("send");
    p.flush().await.expect("flush");
    server.stop().await.expect("stop");
}

/// A listener off loopback without users (or an explicit allow_anonymous = true) refuses to
/// start, saying both ways forward; with a users file the same config passes the check.
#[test]
fn a_network_listener_without_a_login_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = common::brook()
        .args(["serve", "--mqtt", "0.0.0.0:1883", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .expect("brook serve");
    assert!(!out.status.success(), "started without a login on 0.0.0.0");
    let said = String::from_utf8_lossy(&out.stderr);
    for want in [
        "listeners.mqtt",
        "auth.users_file",
        "brook passwd",
        "allow_anonymous = true",
    ] {
        assert!(said.contains(want), "{want:?} not in: {said}");
    }
    assert!(!dir.path().join("data").exists(), "it opened the data dir");
    // With a users file (which `config check` reads, so a real one) the same listeners pass.
    let users = dir.path().join("users");
    common::auth::brook_passwd(&users, "sensor-1", "a long enough password");
    let config = dir.path().join("lan.toml");
    std::fs::write(
        &config,
        format!(
            "[listeners]\nnative = \"0.0.0.0:7420\"\nmqtt = \"0.0.0.0:1883\"\n[auth]\nusers_file = {:?}\n",
            users.display().to_string()
        ),
    )
    .expect("write");
    ok(
        common::brook()
            .args(["config", "check"])
            .arg(&config)
            .output()
            .expect("config check"),
        "config check with users",
    );
}

fn wait_for_log(addrs: &common::Addrs, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !addrs.log_tail().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            addrs.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGHUP re-reads the users file: a user added meanwhile logs in, one removed is refused,
/// and a subscriber connected before keeps its connection and its messages.
#[test]
fn sighup_reloads_users_and_keeps_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = secured_config(dir.path(), None);
    let (mut server, addrs) =
        common::serve_with(&dir.path().join("data"), Some(&config), "127.0.0.1:0");
    let p = port(&addrs.mqtt);
    // A persistent session, subscribed before anything is published (-E: exit on SUBACK),
    // then the subscriber that stays connected across the reloads.
    let sub_args = |c: &mut Command| {
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-i",
            "ops-sub",
            "-q",
            "1",
            "-c",
        ])
        .args(["-u", "ops", "-P", "pw-ops", "-t", "public/#"]);
    };
    let mut first = require("mosquitto_sub", "apt-get install mosquitto-clients");
    sub_args(&mut first);
    ok(
        first.arg("-E").output().expect("mosquitto_sub -E"),
        "subscribe",
    );
    let mut sub = require("mosquitto_sub", "apt-get install mosquitto-clients");
    sub_args(&mut sub);
    let sub = sub
        .args(["-C", "2", "-W", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    let publish = |user: &str, password: &str, msg: &str| {
        require("mosquitto_pub", "apt-get install mosquitto-clients")
            .args(["-h", "127.0.0.1", "-p", &p, "-q", "1"])
            .args(["-u", user, "-P", password, "-t", "public/news", "-m", msg])
            .output()
            .expect("mosquitto_pub")
    };
    let users = dir.path().join("users");
    assert!(
        !publish("newcomer", "pw-new", "x").status.success(),
        "an unknown user got in"
    );
    brook_passwd(&users, "newcomer", "pw-new");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGHUP) };
    wait_for_log(&addrs, "users and ACL re-read");
    // Newcomer has no ACL rule: it logs in, its publish is acknowledged (3.1.1) and dropped.
    ok(publish("newcomer", "pw-new", "dropped"), "newcomer logs in");
    ok(publish("ops", "pw-ops", "one"), "ops publishes");
    ok(
        common::brook()
            .arg("passwd")
            .arg("-D")
            .arg(&users)
            .arg("newcomer")
            .output()
            .expect("brook passwd -D"),
        "brook passwd -D",
    );
    // SAFETY: as above.
    unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while publish("newcomer", "pw-new", "x").status.success() {
        assert!(Instant::now() < deadline, "a removed user still gets in");
    }
    ok(publish("ops", "pw-ops", "two"), "ops publishes again");
    let out = sub.wait_with_output().expect("mosquitto_sub");
    assert_eq!(
        ok(out, "mosquitto_sub (connected across two reloads)"),
        "one\ntwo\n"
    );
    common::mirror::stop(&mut server);
}

/// A users file written by `brook passwd` works in Mosquitto itself (same format both ways).
#[test]
fn brook_passwd_files_work_in_mosquitto() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users");
    brook_passwd(&users, "bob", "builder");
    brook_passwd(&users, "carol", "c4rol");
    let text = std::fs::read_to_string(&users).expect("users");
    assert!(
        text.starts_with("bob:$7$1000$") && text.contains("\ncarol:$7$"),
        "{text}"
    );
    let mode = std::fs::metadata(&users).expect("meta").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    // Mosquitto drops to its own user: give it a readable copy.
    let copy = dir.path().join("mq").join("passwd");
    std::fs::create_dir_all(copy.parent().expect("parent")).expect("mkdir");
    std::fs::write(&copy, &text).expect("copy");
    let (_, port) = common::mirror::free_port();
    let mut mq = start_mosquitto(&dir.path().join("mq"), port, &copy);
    let p = port.to_string();
    let publish = |user: &str, password: &str| {
        require("mosquitto_pub", "apt-get install mosquitto-clients")
            .args(["-h", "127.0.0.1", "-p", &p, "-q", "1", "-t", "t", "-m", "m"])
            .args(["-u", user, "-P", password])
            .output()
            .expect("mosquitto_pub")
    };
    ok(publish("bob", "builder"), "Mosquitto accepts bob");
    ok(publish("carol", "c4rol"), "Mosquitto accepts carol");
    assert!(!publish("bob", "c4rol").status.success(), "wrong password");
    let _ = mq.kill();
    let _ = mq.wait();
}

/// Mosquitto with logins from `password_file` (made readable for Mosquitto's own user).
fn start_mosquitto(dir: &Path, port: u16, password_file: &Path) -> common::Process {
    let mut perms = std::fs::metadata(password_file)
        .expect("passwd")
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(password_file, perms).expect("chmod");
    common::mirror::start_mosquitto_with(
        dir,
        port,
        &format!(
            "allow_anonymous false\npassword_file {}\n",
            password_file.display()
        ),
    )
}

/// Reads until the server closes `stream` (EOF or reset); panics if it is still open after
/// `within`.
fn closed_by_server(mut stream: std::net::TcpStream, within: Duration) {
    use std::io::Read;
    stream.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the server kept the connection open: {e}"),
        }
    }
}

/// `max_connections_per_address` (over all listeners together) closes the connection past the
/// limit at once; a connection that never finishes its handshake is closed after
/// `handshake_timeout`; both are counted, and the freed room takes new clients.
#[test]
fn per_address_limit_and_handshake_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("brook.toml");
    std::fs::write(
        &config,
        "[auth]\nmax_connections_per_address = 2\nlimit_loopback = true\nhandshake_timeout = \"1s\"\n",
    )
    .expect("config");
    let (mut server, addrs) =
        common::serve_with(&dir.path().join("data"), Some(&config), "127.0.0.1:0");
    let connect = |addr: &str| std::net::TcpStream::connect(addr).expect("connect");
    // Two silent native connections hold this address's two slots; a third, on another
    // listener, is closed at once (well before the handshake timeout could close it).
    let first = connect(&addrs.native);
    let second = connect(&addrs.native);
    let t0 = Instant::now();
    closed_by_server(connect(&addrs.mqtt), Duration::from_secs(30));
    let refused_after = t0.elapsed();
    // The two silent ones are closed once their second is up.
    closed_by_server(first, Duration::from_secs(30));
    closed_by_server(second, Duration::from_secs(30));
    assert!(
        refused_after < t0.elapsed(),
        "the refused connection was not closed first"
    );
    let body = http(&addrs.http, "/metrics", None).expect("metrics");
    assert_eq!(metric(&body, "brook_auth_address_limit_refusals_total "), 1);
    assert_eq!(metric(&body, "brook_auth_handshake_timeouts_total "), 2);
    // A silent MQTT connection: no CONNECT within the second.
    closed_by_server(connect(&addrs.mqtt), Duration::from_secs(30));
    let body = http(&addrs.http, "/metrics", None).expect("metrics");
    assert_eq!(metric(&body, "brook_auth_handshake_timeouts_total "), 3);
    assert_eq!(metric(&body, "brook_auth_address_limit_refusals_total "), 1);
    // The slots are free again: a real client gets in and works.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let c = Client::connect(&addrs.native, "after")
            .await
            .expect("connect");
        c.create_topic("t", TopicSettings::default())
            .await
            .expect("create");
    });
    common::mirror::stop(&mut server);
}

/// What one user may do with log topics and groups; every protocol must give these answers.
/// (operation, sensor-1, ops, anonymous)
const MATRIX: &[(&str, &str, &str, &str)] = &[
    ("login", "ok", "ok", "ok"),
    ("list_sees_telemetry", "ok", "ok", "denied"),
    ("list_sees_secret", "denied", "ok", "denied"),
    ("produce_telemetry", "ok", "ok", "denied"),
    ("produce_secret", "denied", "ok", "denied"),
    ("consume_telemetry", "ok", "ok", "denied"),
    ("consume_secret", "denied", "ok", "denied"),
    ("create", "denied", "ok", "denied"),
    ("delete_scratch", "denied", "ok", "denied"),
    ("commit_own", "ok", "ok", "denied"),
    ("commit_other", "denied", "ok", "denied"),
    ("list_groups", "denied", "ok", "denied"),
];

fn expected(column: usize) -> std::collections::BTreeMap<String, String> {
    MATRIX
        .iter()
        .map(|r| {
            let v = [r.1, r.2, r.3][column];
            (r.0.to_string(), v.to_string())
        })
        .collect()
}

fn verdict<T>(r: Result<T, ClientError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) if code_of(&e) == Some(ErrorCode::NotAuthorized) => "denied".into(),
        Err(e) => format!("error: {e}"),
    }
}

/// The matrix's answers from the native listener, with the Brook client.
async fn native_answers(
    addr: &str,
    login: Option<(&str, &str)>,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let client =
        match Client::connect_as(addr, "matrix", login.map(|(u, p)| (u, p.as_bytes()))).await {
            Ok(c) => c,
            Err(e) => {
                out.insert("login".into(), format!("error: {e}"));
                return out;
            }
        };
    let user = login.map_or("anon", |l| l.0);
    out.insert("login".into(), "ok".into());
    let topics = client.list_topics().await.unwrap_or_default();
    for t in ["telemetry", "secret"] {
        let seen = if topics.iter().any(|x| x == t) {
            "ok"
        } else {
            "denied"
        };
        out.insert(format!("list_sees_{t}"), seen.into());
    }
    let mut batch = BatchBuilder::new();
    batch.push(1_700_000_000_000, None, Some(&b"matrix"[..]), &[]);
    for t in ["telemetry", "secret"] {
        let r = client
            .produce(t, Some(0), None, Acks::Durable, &batch)
            .await;
        out.insert(format!("produce_{t}"), verdict(r));
        let r = client.fetch(t, 0, 0, 1 << 20, 0, Duration::ZERO).await;
        out.insert(format!("consume_{t}"), verdict(r));
    }
    let r = client
        .create_topic(&format!("new-{user}-native"), TopicSettings::default())
        .await;
    out.insert("create".into(), verdict(r));
    out.insert(
        "delete_scratch".into(),
        verdict(client.delete_topic("scratch").await),
    );
    let own = format!("g-{user}");
    for (key, group) in [("commit_own", own.as_str()), ("commit_other", "g-other")] {
        let r = client
            .commit_offsets(group, None, &[("telemetry", 0, 1)])
            .await;
        out.insert(key.into(), verdict(r));
    }
    out.insert("list_groups".into(), verdict(client.list_groups().await));
    out
}

/// The authorization matrix: sensor-1 (a mosquitto_passwd line), ops (a `brook passwd` line)
/// and an anonymous client ask the native listener and the Kafka listener (confluent-kafka
/// with SASL PLAIN and SCRAM-SHA-512, over plain TCP and TLS) the same questions about log
/// topics and groups, and every answer is the one in [`MATRIX`]. A wrong password and an
/// unknown user are refused on Kafka with both mechanisms; the HTTP API wants its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_is_the_same_on_every_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = secured_config(dir.path(), Some(true));
    let pki = common::pki::pki(dir.path());
    let mut config = common::server_config(&dir.path().join("data"));
    config.auth = brook::config::Config::load(&file).expect("config").auth;
    config.listeners.kafka_tls = "127.0.0.1:0".into();
    config.tls.cert_file = Some(pki.server_cert.clone());
    config.tls.key_file = Some(pki.server_key.clone());
    let server = brook::serve::start(config).await.expect("start");
    let native = server.native_addr.expect("native listener").to_string();
    let kafka = server.kafka_addr.expect("kafka listener").to_string();
    let kafka_tls = server
        .kafka_tls_addr
        .expect("kafka_tls listener")
        .to_string();
    let http_addr = server.http_addr.expect("http listener").to_string();

    let ops = Client::connect_as(&native, "setup", Some(("ops", b"pw-ops")))
        .await
        .expect("ops");
    let mut batch = BatchBuilder::new();
    batch.push(1_700_000_000_000, None, Some(&b"first"[..]), &[]);
    for t in ["telemetry", "secret"] {
        ops.create_topic(t, TopicSettings::default())
            .await
            .expect("create");
        ops.produce(t, Some(0), None, Acks::Durable, &batch)
            .await
            .expect("seed");
    }
    let scratch = || async {
        match ops.create_topic("scratch", TopicSettings::default()).await {
            Ok(()) => {}
            Err(e) if code_of(&e) == Some(ErrorCode::TopicExists) => {}
            Err(e) => panic!("scratch: {e}"),
        }
    };
    let python = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/security/kafka_acl.py");
    let kafka_answers = |user: &str, password: &str, mechanism: &str, tls: bool, only: bool| {
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .args(["--bootstrap", if tls { &kafka_tls } else { &kafka }])
            .args(["--user", user, "--password", password])
            .args(["--mechanism", mechanism]);
        if tls {
            cmd.arg("--ca").arg(&pki.ca);
        }
        if only {
            cmd.arg("--login-only");
        }
        // The refused logins' messages come from librdkafka's log lines on stderr.
        let out = cmd.output().expect("run kafka_acl.py");
        assert!(
            out.status.success(),
            "kafka_acl.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answers =
            serde_json::from_slice::<std::collections::BTreeMap<String, String>>(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        (answers, String::from_utf8_lossy(&out.stderr).into_owned())
    };

    for (column, login) in [
        (0, Some(("sensor-1", "pw-sensor"))),
        (1, Some(("ops", "pw-ops"))),
        (2, None),
    ] {
        let want = expected(column);
        scratch().await;
        let got = native_answers(&native, login).await;
        assert_eq!(got, want, "native, {login:?}");
        let ways: &[(&str, bool)] = if login.is_some() {
            &[
                ("PLAIN", false),
                ("SCRAM-SHA-512", false),
                ("PLAIN", true),
                ("SCRAM-SHA-512", true),
            ]
        } else {
            &[("none", false), ("none", true)]
        };
        for &(mechanism, tls) in ways {
            scratch().await;
            let (u, p) = login.unwrap_or(("", ""));
            let (got, _) =
                tokio::task::block_in_place(|| kafka_answers(u, p, mechanism, tls, false));
            assert_eq!(got, want, "kafka {mechanism} tls={tls}, {login:?}");
        }
    }
    // Refused logins on Kafka, both mechanisms.
    for (user, password) in [("ops", "wrong"), ("nobody", "pw-ops")] {
        for mechanism in ["PLAIN", "SCRAM-SHA-512"] {
            let (got, said) = tokio::task::block_in_place(|| {
                kafka_answers(user, password, mechanism, false, true)
            });
            assert_ne!(got.get("login").map(String::as_str), Some("ok"));
            // librdkafka prints the reason Brook gave.
            assert!(
                said.contains("SASL authentication error")
                    && said.contains("bad user name or password"),
                "{user}/{password} with {mechanism}: {said}"
            );
        }
    }
    // Debian's kcat (librdkafka 2.0) logs in with SCRAM-SHA-512 too (its client-final nonce
    // repeats the client's part, as Kafka's broker tolerates), and lists what ops may see.
    for mechanism in ["SCRAM-SHA-512", "PLAIN"] {
        let out = require("kcat", "apt-get install kcat")
            .args(["-b", &kafka, "-L", "-m", "10"])
            .args(["-X", "security.protocol=SASL_PLAINTEXT"])
            .args(["-X", &format!("sasl.mechanisms={mechanism}")])
            .args(["-X", "sasl.username=ops", "-X", "sasl.password=pw-ops"])
            .output()
            .expect("kcat");
        let listed = ok(out, &format!("kcat -L with {mechanism}"));
        assert!(listed.contains("\"secret\""), "{listed}");
    }
    // A SaslHandshake v0 client sends its token bare: PLAIN, then an empty answer, then
    // requests as usual.
    let mut s = std::net::TcpStream::connect(&kafka).expect("kafka");
    let mut body = (5i16).to_be_bytes().to_vec();
    body.extend_from_slice(b"PLAIN");
    std::io::Write::write_all(&mut s, &kafka_request(17, 0, 1, &body)).expect("handshake v0");
    let r = kafka_response(&mut s);
    assert_eq!(&r[4..6], &[0, 0], "SaslHandshake v0");
    let token = b"\0ops\0pw-ops";
    let mut framed = (token.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(token);
    std::io::Write::write_all(&mut s, &framed).expect("bare token");
    assert!(kafka_response(&mut s).is_empty(), "PLAIN's empty answer");
    std::io::Write::write_all(&mut s, &kafka_request(3, 0, 2, &0i32.to_be_bytes())).expect("md");
    let r = kafka_response(&mut s);
    assert!(
        r.windows(6).any(|w| w == b"secret"),
        "Metadata after a v0 login"
    );
    // The HTTP API is the operator's: its token sees everything, no token nothing.
    let h = http_addr.clone();
    let topics =
        tokio::task::block_in_place(|| http(&h, "/api/topics", Some(TOKEN))).expect("token");
    assert!(topics.contains("\"secret\""), "{topics}");
    let e = tokio::task::block_in_place(|| http(&h, "/api/topics", None)).expect_err("none");
    assert!(e.contains("401"), "{e}");
    server.stop().await.expect("stop");
}

/// A Kafka request with a v1 header (client id "t"), size prefix included.
fn kafka_request(key: i16, version: i16, correlation: i32, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&key.to_be_bytes());
    r.extend_from_slice(&version.to_be_bytes());
    r.extend_from_slice(&correlation.to_be_bytes());
    r.extend_from_slice(&1i16.to_be_bytes());
    r.push(b't');
    r.extend_from_slice(body);
    let mut out = (r.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&r);
    out
}

/// Reads one Kafka response (size prefix, then the rest).
fn kafka_response(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut size = [0u8; 4];
    s.read_exact(&mut size).expect("response size");
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).expect("response");
    body
}

/// SaslHandshake v1 (PLAIN) and SaslAuthenticate v0 as `user`; returns the login's error code.
fn kafka_plain_login(s: &mut std::net::TcpStream, user: &str, password: &str) -> i16 {
    use std::io::Write;
    let mut body = (5i16).to_be_bytes().to_vec();
    body.extend_from_slice(b"PLAIN");
    s.write_all(&kafka_request(17, 1, 1, &body))
        .expect("handshake");
    let r = kafka_response(s);
    assert_eq!(&r[4..6], &[0, 0], "SaslHandshake answered an error");
    let token = format!("\0{user}\0{password}");
    let mut body = (token.len() as i32).to_be_bytes().to_vec();
    body.extend_from_slice(token.as_bytes());
    s.write_all(&kafka_request(36, 0, 2, &body))
        .expect("authenticate");
    let r = kafka_response(s);
    i16::from_be_bytes([r[4], r[5]])
}

/// Sends one byte every 200 ms until the server closes the connection; returns how long
/// that took (panics after 20 s).
fn trickle_until_closed(mut s: std::net::TcpStream, first: &[u8]) -> Duration {
    use std::io::{Read, Write};
    let t0 = Instant::now();
    s.write_all(first).expect("first bytes");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    while t0.elapsed() < Duration::from_secs(20) {
        match s.read(&mut buf) {
            Ok(0) => return t0.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return t0.elapsed(),
            Err(_) => {
                if s.write_all(b"x").is_err() {
                    return t0.elapsed();
                }
            }
        }
    }
    panic!("a trickling connection was kept open for 20 s");
}

/// One `handshake_timeout` from the accept covers the handshake and the login on every
/// listener, however the bytes trickle in: native (a frame dribbled byte by byte; a handshake
/// without the Authenticate a users file requires), MQTT (a CONNECT dribbled), Kafka (a
/// request dribbled; a silent socket). After a SASL login the Kafka listener's idle timeout
/// closes a silent connection. Every close before a login is counted.
#[test]
fn one_deadline_for_handshake_and_login_on_every_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = secured_config(dir.path(), None);
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("handshake_timeout = \"1s\"\n[kafka]\nidle_timeout = \"1s\"\n");
    std::fs::write(&config, text).expect("config");
    let (mut server, addrs) =
        common::serve_with(&dir.path().join("data"), Some(&config), "127.0.0.1:0");
    let connect = |addr: &str| std::net::TcpStream::connect(addr).expect("connect");
    let within = |took: Duration, what: &str| {
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(4),
            "{what}: closed after {took:?}, not at the 1 s deadline"
        );
    };
    // Native: a frame whose length says 1,000 bytes, then a byte every 200 ms.
    within(
        trickle_until_closed(connect(&addrs.native), &1000u32.to_le_bytes()),
        "native trickle",
    );
    // Native: the handshake, then nothing (the users file asks for Authenticate).
    let hello = brook::proto::encode(&brook::proto::RequestFrame {
        correlation_id: 1,
        request: brook::proto::Request::Handshake {
            version: brook::proto::PROTOCOL_VERSION,
            client_id: "slow",
        },
    });
    let mut s = connect(&addrs.native);
    std::io::Write::write_all(&mut s, &hello).expect("handshake");
    let t0 = Instant::now();
    closed_by_server(s, Duration::from_secs(10));
    within(t0.elapsed(), "native without login");
    // MQTT: a CONNECT claiming 200 bytes, dribbled.
    within(
        trickle_until_closed(connect(&addrs.mqtt), &[0x10, 200, 1]),
        "mqtt trickle",
    );
    // Kafka: a request claiming 1,000 bytes, dribbled; a silent socket.
    within(
        trickle_until_closed(connect(&addrs.kafka), &1000i32.to_be_bytes()),
        "kafka trickle",
    );
    let t0 = Instant::now();
    closed_by_server(connect(&addrs.kafka), Duration::from_secs(10));
    within(t0.elapsed(), "kafka silent");
    let body = http(&addrs.http, "/metrics", None).expect("metrics");
    assert_eq!(metric(&body, "brook_auth_handshake_timeouts_total "), 5);
    // Kafka after a login: the idle timeout (1 s here), not the handshake deadline.
    let mut s = connect(&addrs.kafka);
    assert_eq!(kafka_plain_login(&mut s, "ops", "pw-ops"), 0, "login");
    let t0 = Instant::now();
    closed_by_server(s, Duration::from_secs(10));
    within(t0.elapsed(), "kafka idle");
    let body = http(&addrs.http, "/metrics", None).expect("metrics");
    assert_eq!(metric(&body, "brook_auth_handshake_timeouts_total "), 5);
    common::mirror::stop(&mut server);
}

/// Connections that never log in hold at most half a listener's `max_connections`: with
/// both their places taken, a new client still gets in and logs in (the oldest silent one is
/// closed to make room, and counted), and logged-in clients keep the other half.
#[test]
fn silent_connections_cannot_lock_clients_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = secured_config(dir.path(), None);
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("[kafka]\nmax_connections = 4\n[native]\nmax_connections = 4\n");
    std::fs::write(&config, text).expect("config");
    let (mut server, addrs) =
        common::serve_with(&dir.path().join("data"), Some(&config), "127.0.0.1:0");
    let connect = |addr: &str| std::net::TcpStream::connect(addr).expect("connect");
    // Two silent connections fill the pre-login half; a logging-in client evicts the older
    // one and gets in. The listener accepts in arrival order: `first` is the oldest.
    let first = connect(&addrs.kafka);
    let _second = connect(&addrs.kafka);
    let mut client = connect(&addrs.kafka);
    assert_eq!(kafka_plain_login(&mut client, "ops", "pw-ops"), 0);
    closed_by_server(first, Duration::from_secs(5));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let _silent: Vec<_> = (0..2).map(|_| connect(&addrs.native)).collect();
        let c = Client::connect_as(&addrs.native, "c", Some(("ops", b"pw-ops")))
            .await
            .expect("a native client gets in past two silent ones");
        c.list_topics().await.expect("and works");
    });
    let body = http(&addrs.http, "/metrics", None).expect("metrics");
    assert_eq!(metric(&body, "brook_auth_pending_evictions_total "), 2);
    common::mirror::stop(&mut server);
}

fn mqtt_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn mqtt_packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    common::mqtt_varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// Reads one MQTT packet: (first byte, body).
fn mqtt_read(s: &mut std::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    use std::io::Read;
    let mut first = [0u8; 1];
    s.read_exact(&mut first).ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).ok()?;
        len |= usize::from(b[0] & 0x7f) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((first[0], body))
}

/// An MQTT 3.1.1 CONNECT (clean session 0) as `user`; returns (session present, return code).
fn mqtt_connect(
    addr: &str,
    id: &str,
    user: &str,
    password: &str,
) -> (std::net::TcpStream, bool, u8) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut body = Vec::new();
    mqtt_str(&mut body, "MQTT");
    body.extend_from_slice(&[4, 0xc0, 0, 60]);
    mqtt_str(&mut body, id);
    mqtt_str(&mut body, user);
    mqtt_str(&mut body, password);
    s.write_all(&mqtt_packet(0x10, &body)).expect("CONNECT");
    let (kind, ack) = mqtt_read(&mut s).expect("CONNACK");
    assert_eq!(kind, 0x20, "CONNACK");
    (s, ack[0] & 1 == 1, ack[1])
}

/// A persistent MQTT session belongs to the user that made it: another user connecting with
/// its client id is refused ("not authorized", logged, counted) and changes nothing: the
/// owner's stored subscription still receives what is published while it is away.
#[test]
fn an_mqtt_session_belongs_to_its_user() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = secured_config(dir.path(), None);
    let (mut server, addrs) =
        common::serve_with(&dir.path().join("data"), Some(&config), "127.0.0.1:0");
    // sensor-1, client id dev1, subscribes to commands/dev1/# at QoS 1, then leaves.
    let (mut s, present, rc) = mqtt_connect(&addrs.mqtt, "dev1", "sensor-1", "pw-sensor");
    assert_eq!((present, rc), (false, 0));
    let mut sub = vec![0, 1];
    mqtt_str(&mut sub, "commands/dev1/#");
    sub.push(1);
    s.write_all(&mqtt_packet(0x82, &sub)).expect("SUBSCRIBE");
    let (kind, ack) = mqtt_read(&mut s).expect("SUBACK");
    assert_eq!((kind, ack[2]), (0x90, 1), "granted QoS 1");
    s.write_all(&[0xe0, 0]).expect("DISCONNECT");
    closed_by_server(s, Duration::from_secs(10));
    // ops, with the same client id: refused, 3.1.1 return code 5 (not authorized).
    let (_s, present, rc) = mqtt_connect(&addrs.mqtt, "dev1", "ops", "pw-ops");
    assert_eq!((present, rc), (false, 5), "another user took the session");
    // ops publishes to it under its own client id while sensor-1 is away.
    let (mut p, _, rc) = mqtt_connect(&addrs.mqtt, "ops-console", "ops", "pw-ops");
    assert_eq!(rc, 0);
    let mut publish = Vec::new();
    mqtt_str(&mut publish, "commands/dev1/reboot");
    publish.extend_from_slice(&[0, 7]);
    publish.extend_from_slice(b"now");
    p.write_all(&mqtt_packet(0x32, &publish)).expect("PUBLISH");
    let (kind, _) = mqtt_read(&mut p).expect("PUBACK");
    assert_eq!(kind, 0x40);
    // sensor-1 comes back: its session and subscription are there, with the message.
    let (mut s, present, rc) = mqtt_connect(&addrs.mqtt, "dev1", "sensor-1", "pw-sensor");
    assert_eq!((present, rc), (true, 0), "the owner's session is gone");
    let (kind, body) = mqtt_read(&mut s).expect("the message sent while away");
    assert_eq!(kind & 0xf0, 0x30, "PUBLISH");
    assert!(body.ends_with(b"now"), "{body:?}");
    let metrics = http(&addrs.http, "/metrics", None).expect("metrics");
    assert_eq!(
        metric(&metrics, "brook_mqtt_foreign_session_refusals_total "),
        1
    );
    assert!(
        addrs
            .log_tail()
            .contains("client id \"dev1\" is the session of user \"sensor-1\""),
        "{}",
        addrs.log_tail()
    );
    common::mirror::stop(&mut server);
}

/// `log.max_topics` and `log.max_partitions` hold on every path: a native create, a Kafka
/// CreateTopics and a Kafka Metadata auto-creation past the cap are refused with an error that
/// names the key; nothing was created.
#[test]
fn the_topic_and_partition_caps_hold_everywhere() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("brook.toml");
    std::fs::write(&config, "[log]\nmax_topics = 3\nmax_partitions = 6\n").expect("config");
    let (mut server, addrs) =
        common::serve_with(&dir.path().join("data"), Some(&config), "127.0.0.1:0");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let c = Client::connect(&addrs.native, "c").await.expect("connect");
        let have = c.list_topics().await.expect("list").len();
        assert!(have < 3, "{have} topics at start");
        let six = TopicSettings {
            partitions: Some(6),
            ..TopicSettings::default()
        };
        if have == 0 {
            c.create_topic("a", TopicSettings::default())
                .await
                .expect("a");
        }
        let e = c.create_topic("wide", six).await.expect_err("partitions");
        assert_eq!(code_of(&e), Some(ErrorCode::LimitReached), "{e}");
        assert!(e.to_string().contains("log.max_partitions"), "{e}");
        while c.list_topics().await.expect("list").len() < 3 {
            let n = c.list_topics().await.expect("list").len();
            c.create_topic(&format!("t{n}"), TopicSettings::default())
                .await
                .expect("room");
        }
        let e = c
            .create_topic("one-more", TopicSettings::default())
            .await
            .expect_err("cap");
        assert_eq!(code_of(&e), Some(ErrorCode::LimitReached), "{e}");
        assert!(e.to_string().contains("log.max_topics"), "{e}");
    });
    // Kafka Metadata v4 naming an unknown topic with auto-creation on: POLICY_VIOLATION (44).
    let mut s = std::net::TcpStream::connect(&addrs.kafka).expect("kafka");
    let mut body = 1i32.to_be_bytes().to_vec();
    body.extend_from_slice(&9i16.to_be_bytes());
    body.extend_from_slice(b"auto-made");
    body.push(1); // allow_auto_topic_creation
    s.write_all(&kafka_request(3, 4, 7, &body))
        .expect("metadata");
    let r = kafka_response(&mut s);
    let code_at = r
        .windows(11)
        .position(|w| w[2..] == *b"auto-made")
        .map(|i| i16::from_be_bytes([r[i - 2], r[i - 1]]))
        .expect("the topic in the answer");
    assert_eq!(code_at, 44, "POLICY_VIOLATION");
    rt.block_on(async {
        let c = Client::connect(&addrs.native, "c").await.expect("connect");
        let topics = c.list_topics().await.expect("list");
        assert_eq!(topics.len(), 3, "{topics:?}");
    });
    common::mirror::stop(&mut server);
}

/// Failed logins back off per user name, on every listener together: right after a wrong
/// password, the right one is refused unchecked too (counted as backed_off) until the
/// backoff has passed; then it works and the count starts again.
#[test]
fn failed_logins_back_off_per_user_across_listeners() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = secured_config(dir.path(), None);
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("login_backoff = \"0s\"", "login_backoff = \"2s\"");
    std::fs::write(&config, text).expect("config");
    let (mut server, addrs) =
        common::serve_with(&dir.path().join("data"), Some(&config), "127.0.0.1:0");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let native = |password: &'static str| {
        rt.block_on(Client::connect_as(
            &addrs.native,
            "c",
            Some(("ops", password.as_bytes())),
        ))
    };
    let t0 = Instant::now();
    let e = native("wrong").err().expect("wrong password");
    assert_eq!(code_of(&e), Some(ErrorCode::AuthenticationFailed), "{e}");
    // The right password on another listener, at once: held back.
    let mut k = std::net::TcpStream::connect(&addrs.kafka).expect("kafka");
    assert_eq!(
        kafka_plain_login(&mut k, "ops", "pw-ops"),
        58,
        "SASL_AUTHENTICATION_FAILED"
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "too slow to test");
    let metrics = http(&addrs.http, "/metrics", None).expect("metrics");
    assert_eq!(
        metric(&metrics, "brook_auth_logins_total{outcome=\"backed_off\"} "),
        1
    );
    // Once the 2 s have passed, the right password works again.
    let wait = Duration::from_secs(2).saturating_sub(t0.elapsed());
    std::thread::sleep(wait + Duration::from_millis(100)); // the backoff is time itself
    let c = native("pw-ops").expect("after the backoff");
    rt.block_on(c.list_topics()).expect("works");
    common::mirror::stop(&mut server);
}

/// Valid inputs for each listener, to mutate.
fn hostile_bases() -> [(&'static str, Vec<Vec<u8>>); 4] {
    use brook::proto::{OffsetSpec, Request, RequestFrame, encode};
    let frame = |id: u32, request: Request<'_>| {
        encode(&RequestFrame {
            correlation_id: id,
            request,
        })
    };
    let hello = frame(
        1,
        Request::Handshake {
            version: brook::proto::PROTOCOL_VERSION,
            client_id: "fuzz",
        },
    );
    let mut batch = BatchBuilder::new();
    batch.push(1_700_000_000_000, Some(&b"k"[..]), Some(&b"value"[..]), &[]);
    let mut native = Vec::new();
    for request in [
        Request::ListTopics,
        Request::CreateTopic {
            name: "fz",
            settings: TopicSettings::default(),
        },
        Request::DescribeTopic { name: "fz" },
        Request::ListOffsets {
            topic: "fz",
            partition: 0,
            spec: OffsetSpec::Latest,
        },
        Request::Produce(brook::proto::Produce {
            topic: "fz",
            partition: Some(0),
            partition_key: None,
            acks: Acks::Written,
            record_count: batch.count(),
            first_timestamp: batch.first_timestamp(),
            records: batch.records_bytes(),
        }),
        Request::FetchOffsets {
            group: "g",
            topic: "fz",
        },
    ] {
        let mut b = hello.clone();
        b.extend_from_slice(&frame(2, request));
        native.push(b);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let files = |sub: &str| -> Vec<Vec<u8>> {
        std::fs::read_dir(root.join(sub))
            .expect("regressions")
            .map(|e| std::fs::read(e.expect("entry").path()).expect("read"))
            .collect()
    };
    let kafka = files("kafka_request")
        .into_iter()
        .map(|r| {
            let mut b = (r.len() as i32).to_be_bytes().to_vec();
            b.extend_from_slice(&r);
            b
        })
        .collect();
    let http = [
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /api/topics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer 0123456789abcdef\r\n\r\n",
        "GET /api/mirrors HTTP/1.0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic dXNlcjowMTIzNDU2Nzg5YWJjZGVm\r\n\r\n",
        "GET /api/status HTTP/1.1\r\nAuthorization: basic OjAxMjM0NTY3ODlhYmNkZWY=\r\n\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    [
        ("native", native),
        ("kafka", kafka),
        ("mqtt", files("mqtt_packet")),
        ("http", http),
    ]
}

/// One malformed input from `bases`: random bytes, a mutated valid input, a valid one with a
/// huge length or count written into it, or one cut short.
fn hostile_input(rng: &mut common::Rng, bases: &[Vec<u8>], i: u64) -> Vec<u8> {
    let base = &bases[rng.below(bases.len() as u64) as usize];
    let mut b = base.clone();
    match i % 4 {
        0 => (0..rng.below(600))
            .map(|_| rng.next() as u8)
            .collect::<Vec<u8>>(),
        1 => {
            for _ in 0..=rng.below(8) {
                if !b.is_empty() {
                    let at = rng.below(b.len() as u64) as usize;
                    b[at] = rng.next() as u8;
                }
            }
            b
        }
        2 => {
            let big: [u8; 4] = match rng.below(3) {
                0 => [0x7f, 0xff, 0xff, 0xff],
                1 => [0xff, 0xff, 0xff, 0xff],
                _ => [0x00, 0xff, 0xff, 0xf0],
            };
            if b.len() >= 4 {
                let at = rng.below(b.len() as u64 - 3) as usize;
                b[at..at + 4].copy_from_slice(&big);
            }
            b
        }
        _ => {
            let cut = rng.below(b.len() as u64 + 1) as usize;
            b.truncate(cut);
            b
        }
    }
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field")
}

/// No input takes Brook down or swells it: 10,000 malformed inputs per listener (random
/// bytes, mutated valid frames, huge claimed lengths and counts, truncated frames), each on a
/// connection of its own, while 20 connections per listener hold a pre-login frame of almost
/// the largest size allowed before a login. The server never exits, every listener answers a
/// valid client afterwards, and the peak resident set stays under 64 MiB.
#[test]
fn malformed_input_takes_nothing_down() {
    const PER_LISTENER: u64 = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addrs) = common::serve(&dir.path().join("data"));
    let pid = server.id();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let addr_of = |name: &str| match name {
        "native" => addrs.native.clone(),
        "kafka" => addrs.kafka.clone(),
        "mqtt" => addrs.mqtt.clone(),
        _ => addrs.http.clone(),
    };
    // 20 per listener: a frame claiming 64 KiB less a little, 60 KiB of it sent, held open.
    let held: Vec<std::net::TcpStream> = ["native", "kafka", "mqtt", "http"]
        .iter()
        .flat_map(|name| {
            let addr = addr_of(name);
            (0..20).map(move |_| {
                use std::io::Write;
                let mut s = std::net::TcpStream::connect(&addr).expect("connect");
                let claim: u32 = 64 * 1024 - 64;
                let head = match *name {
                    "native" => claim.to_le_bytes().to_vec(),
                    "kafka" => claim.to_be_bytes().to_vec(),
                    "mqtt" => vec![0x10, 0xc0, 0xff, 0x03],
                    _ => b"GET /healthz HTTP/1.1\r\nX: ".to_vec(),
                };
                s.write_all(&head).expect("head");
                let _ = s.write_all(&vec![b'a'; 60 * 1024]);
                s
            })
        })
        .collect();
    let mut rng = common::Rng(0x5eed_b00c);
    for (name, bases) in hostile_bases() {
        let addr = addr_of(name);
        let inputs: Vec<Vec<u8>> = (0..PER_LISTENER)
            .map(|i| hostile_input(&mut rng, &bases, i))
            .collect();
        rt.block_on(send_each(&addr, inputs, 32));
        assert!(
            server.try_wait().expect("wait").is_none(),
            "brook exited during the {name} inputs:\n{}",
            addrs.log_tail()
        );
    }
    drop(held);
    // Every listener still answers a valid client.
    rt.block_on(async {
        let c = Client::connect(&addrs.native, "after")
            .await
            .expect("native");
        c.list_topics().await.expect("native answers");
    });
    let mut k = std::net::TcpStream::connect(&addrs.kafka).expect("kafka");
    std::io::Write::write_all(&mut k, &kafka_request(18, 0, 9, &[])).expect("ApiVersions");
    let r = kafka_response(&mut k);
    assert_eq!(&r[..4], &9i32.to_be_bytes(), "kafka answers");
    let (_m, _, rc) = mqtt_connect(&addrs.mqtt, "after", "u", "p");
    assert_eq!(rc, 0, "mqtt answers");
    assert!(http(&addrs.http, "/healthz", None).is_ok(), "http answers");
    let peak = vm_kib(pid, "VmHWM:");
    eprintln!("peak RSS {peak} KiB after {} inputs", 4 * PER_LISTENER);
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    common::mirror::stop(&mut server);
}

/// Sends each input on a connection of its own (`parallel` at once): write, half-close, read
/// until the server closes (at most 2 s), reset.
async fn send_each(addr: &str, inputs: Vec<Vec<u8>>, parallel: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    {
        let addr: std::net::SocketAddr = addr.parse().expect("addr");
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel));
        let mut tasks = tokio::task::JoinSet::new();
        for input in inputs {
            let permit = std::sync::Arc::clone(&gate)
                .acquire_owned()
                .await
                .expect("gate");
            tasks.spawn(async move {
                if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                    // Reset on close: no TIME_WAIT pile-up over 40,000 connections.
                    let _ = s.set_zero_linger();
                    let _ = s.write_all(&input).await;
                    let _ = s.shutdown().await;
                    let mut sink = [0u8; 4096];
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Ok(n) = s.read(&mut sink).await {
                            if n == 0 {
                                break;
                            }
                        }
                    })
                    .await;
                }
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Any listener can be turned off with `""`: in the config (the Kafka and MQTT listeners here)
/// and on the command line (`brook serve --kafka ""`); the others serve as before.
#[test]
fn listeners_can_be_turned_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut config = common::server_config(&dir.path().join("data"));
        config.listeners.kafka = String::new();
        config.listeners.mqtt = String::new();
        config.validate().expect("off is valid");
        let server = brook::serve::start(config).await.expect("start");
        assert_eq!((server.kafka_addr, server.mqtt_addr), (None, None));
        let native = server.native_addr.expect("native listener").to_string();
        let c = Client::connect(&native, "c").await.expect("native serves");
        c.create_topic("t", TopicSettings::default())
            .await
            .expect("create");
        server.stop().await.expect("stop");
    });
    let mut child = common::brook()
        .args(["serve", "--native", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--mqtt", "127.0.0.1:0", "--kafka", "", "--data-dir"])
        .arg(dir.path().join("cli"))
        .env("BROOK_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .map(common::Process::new)
        .expect("brook serve");
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let line = loop {
        let line = lines
            .next()
            .expect("brook serve --kafka \"\" exited")
            .expect("line");
        if line.contains("listening") {
            break line;
        }
    };
    assert!(line.contains("kafka=-"), "{line}");
    common::mirror::stop(&mut child);
}
