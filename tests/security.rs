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

mod common;
use common::auth::*;

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
    let e = http(&addrs.http, "/api/topics", None).expect_err("the API without a token");
    assert!(e.contains("401"), "{e}");
    let e = http(&addrs.http, "/api/topics", Some("wrong-token-0123456789")).expect_err("bad");
    assert!(e.contains("401"), "{e}");
    let topics = http(&addrs.http, "/api/topics", Some(TOKEN)).expect("the API with its token");
    assert!(topics.contains("\"mqtt\""), "{topics}");
    common::mirror::stop(&mut server);
}

fn record(v: &str) -> Record {
    Record {
        timestamp: 1_700_000_000_000,
        key: None,
        value: v.as_bytes().to_vec(),
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
    let server = brook::server::start(config).await.expect("start");
    let addr = server.native_addr.to_string();

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
    batch.push(1_700_000_000_000, None, b"r1", &[]);
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
    let config = dir.path().join("lan.toml");
    std::fs::write(
        &config,
        "[listeners]\nnative = \"0.0.0.0:7420\"\nmqtt = \"0.0.0.0:1883\"\n[auth]\nusers_file = \"/etc/brook/users\"\n",
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
