//! MQTT through the real binary with real clients: mosquitto_pub / mosquitto_sub (Debian's
//! `mosquitto-clients`) and paho-mqtt (PyPI; `tests/run.sh` installs both). A missing client
//! fails the test with the command to install it.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common;
use crate::common::auth::{ok, port, python, require};

fn mosquitto(program: &str) -> Command {
    require(program, "apt-get install mosquitto-clients")
}

fn kill_9(child: &mut std::process::Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = child.wait();
}

/// 10,000 QoS 1 messages published while a persistent subscriber is away, `kill -9` of Brook,
/// restart: the subscriber gets all of them, in order. The records are readable with
/// `brook consume` (key = MQTT topic).
#[test]
fn offline_subscriber_gets_10000_qos1_messages_in_order_across_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (mut server, addrs) = common::serve(&data);
    let p = port(&addrs.mqtt);
    // Persistent session: subscribe, wait for the SUBACK (-E), leave.
    ok(
        mosquitto("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &p,
                "-c",
                "-i",
                "field-sub",
                "-q",
                "1",
            ])
            .args(["-t", "plant/+/flow", "-E"])
            .output()
            .expect("run mosquitto_sub"),
        "mosquitto_sub -E",
    );
    let lines: String = (0..10_000).map(|i| format!("{i}\n")).collect();
    let mut publ = mosquitto("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-q",
            "1",
            "-t",
            "plant/7/flow",
            "-l",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mosquitto_pub");
    publ.stdin
        .take()
        .expect("stdin")
        .write_all(lines.as_bytes())
        .expect("write");
    ok(publ.wait_with_output().expect("wait"), "mosquitto_pub -l");
    kill_9(&mut server);
    let (mut server, addrs) = common::serve(&data);
    let p = port(&addrs.mqtt);
    let out = mosquitto("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-c",
            "-i",
            "field-sub",
            "-q",
            "1",
        ])
        .args(["-t", "plant/+/flow", "-C", "10000", "-W", "60"])
        .output()
        .expect("run mosquitto_sub");
    let got = ok(out, "mosquitto_sub -C 10000");
    let got: Vec<&str> = got.lines().collect();
    let want: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
    assert_eq!(got.len(), 10_000, "every message delivered");
    assert!(got.iter().zip(&want).all(|(a, b)| a == b), "in order");
    // The same records through the native protocol, keyed by MQTT topic.
    let out = common::brook()
        .args([
            "consume", "--topic", "mqtt", "--count", "2", "--format", "json",
        ])
        .env("BROOK_BROKER", &addrs.native)
        .output()
        .expect("brook consume");
    let json = ok(out, "brook consume");
    let first: serde_json::Value =
        serde_json::from_str(json.lines().next().expect("a line")).expect("json");
    assert_eq!(first["key"], "plant/7/flow", "{json}");
    assert_eq!(first["value"], "0", "{json}");
    kill_9(&mut server);
}

/// Retained messages and wills with mosquitto clients, MQTT 3.1.1 and 5.0.
#[test]
fn mosquitto_retained_and_will_both_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addrs) = common::serve(&dir.path().join("data"));
    let p = port(&addrs.mqtt);
    for (v, topic) in [("mqttv311", "status/a"), ("mqttv5", "status/b")] {
        ok(
            mosquitto("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &p, "-V", v, "-q", "1", "-r"])
                .args(["-t", topic, "-m", "online"])
                .output()
                .expect("run"),
            "mosquitto_pub -r",
        );
        let got = ok(
            mosquitto("mosquitto_sub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &p,
                    "-V",
                    v,
                    "-t",
                    topic,
                    "-C",
                    "1",
                    "-v",
                ])
                .args(["-W", "20"])
                .output()
                .expect("run"),
            "mosquitto_sub retained",
        );
        assert_eq!(got.trim(), format!("{topic} online"));
    }
    // A will: the subscriber waits for it; the publisher with a will is killed.
    let watcher = mosquitto("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-t",
            "lastwill/#",
            "-C",
            "1",
            "-v",
            "-W",
            "30",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn watcher");
    // Wait until the watcher's subscription is live: a retained probe it must receive first
    // would consume its one message, so poll the metrics instead.
    let http = addrs.http.clone();
    wait_for(|| metrics(&http).contains("brook_mqtt_subscriptions 1"));
    let mut dev = mosquitto("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-t",
            "nothing",
            "-i",
            "dev-9",
            "-k",
            "60",
        ])
        .args([
            "--will-topic",
            "lastwill/dev-9",
            "--will-payload",
            "lost",
            "--will-qos",
            "1",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn dev");
    wait_for(|| metrics(&http).contains("brook_mqtt_subscriptions 2"));
    kill_9(&mut dev);
    let out = ok(watcher.wait_with_output().expect("wait"), "watcher");
    assert_eq!(out.trim(), "lastwill/dev-9 lost");
    kill_9(&mut server);
}

fn metrics(http: &str) -> String {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(http) else {
        return String::new();
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Polls `cond` every 20 ms for up to 20 s.
fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached in 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The paho-mqtt scenarios in `tests/mqtt/paho_check.py` (3.1.1 and 5.0), against the binary.
#[test]
fn paho_clients_v311_and_v5() {
    let python = python();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addrs) = common::serve(&dir.path().join("data"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mqtt/paho_check.py");
    let out = Command::new(&python)
        .arg(script)
        .args(["--port", &port(&addrs.mqtt)])
        .output()
        .expect("run python");
    kill_9(&mut server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "paho checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all paho checks passed"), "{stdout}");
}

/// 1,000 connected clients, 100 of them publishing QoS 1 at 10/s to their own topic: every
/// message comes back to its publisher (`brook bench mqtt-fleet` exits 1 on any missing; the
/// minute-long run and its memory are recorded in BENCHMARKS.md).
#[test]
fn a_thousand_clients_each_get_every_own_message_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addrs) = common::serve(&dir.path().join("data"));
    let out = common::brook()
        .args(["bench", "mqtt-fleet", "--target", &addrs.mqtt])
        .args(["--clients", "1000", "--publishers", "100"])
        .args(["--rate", "10", "--duration", "3s", "--json"])
        .output()
        .expect("run brook bench mqtt-fleet");
    kill_9(&mut server);
    let json = ok(out, "brook bench mqtt-fleet");
    let r: serde_json::Value = serde_json::from_str(json.trim()).expect("json report");
    assert!(r["published"].as_u64().expect("published") >= 100, "{r}");
    assert_eq!(r["missing"], 0, "{r}");
    assert_eq!(r["delivered"], r["published"], "{r}");
    assert_eq!(r["acknowledged"], r["published"], "{r}");
}

/// MQTT over WebSockets (`listeners.mqtt_ws`, and `mqtt_wss` over TLS) with paho-mqtt's
/// websockets transport (`tests/mqtt/paho_ws.py`): 5.0 and 3.1.1 clients log in, subscribe and
/// get their own messages; a TCP subscriber gets what a WebSocket client published; a wrong
/// password is refused. A browser-style upgrade without the `mqtt` subprotocol gets HTTP 400.
#[test]
fn mqtt_over_websockets_with_paho() {
    use std::io::Read;
    let python = python();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = common::pki::pki(dir.path());
    let config = common::auth::secured_config(dir.path(), Some(true));
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&format!(
        "[listeners]\nmqtt_ws = \"127.0.0.1:0\"\nmqtt_wss = \"127.0.0.1:0\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        pki.server_cert, pki.server_key
    ));
    std::fs::write(&config, text).expect("config");
    let (mut server, addrs) =
        common::serve_with(&dir.path().join("data"), Some(&config), "127.0.0.1:0");
    let field = |name: &str| port(&common::log_field(&addrs.listening, name));
    let (ws, wss, tcp) = (field("mqtt_ws="), field("mqtt_wss="), field("mqtt="));
    // An upgrade that does not offer the mqtt subprotocol.
    let mut s = std::net::TcpStream::connect(format!("127.0.0.1:{ws}")).expect("connect");
    s.write_all(
        b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("upgrade");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mqtt/paho_ws.py");
    let out = Command::new(&python)
        .arg(script)
        .args(["--ws", &ws, "--wss", &wss, "--tcp", &tcp])
        .arg("--ca")
        .arg(&pki.ca)
        .output()
        .expect("run python");
    kill_9(&mut server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all websocket checks passed"),
        "paho websocket checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs tests/mqtt/exactly_once.py (a QoS 2 publisher, persistent 3.1.1 and 5.0 subscribers at
/// `sub_qos`, 5,000 messages) while Brook is killed with `kill -9` and restarted on the same
/// port after 1,000, 2,000, 3,000 and 4,000 acknowledgements. Returns the script's report and
/// how often each message is stored in the log.
fn delivery_across_kill_9(
    sub_qos: u8,
) -> (serde_json::Value, std::collections::HashMap<String, usize>) {
    use std::io::BufRead;
    const COUNT: usize = 5000;
    let python = python();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (mut server, addrs) = common::serve(&data);
    let mqtt = addrs.mqtt.clone();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mqtt/exactly_once.py");
    let mut run = common::Process::new(
        Command::new(&python)
            .arg(script)
            .args(["--port", &port(&mqtt), "--count", &COUNT.to_string()])
            .args(["--sub-qos", &sub_qos.to_string(), "--timeout", "240"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python"),
    );
    let lines = std::io::BufReader::new(run.stdout.take().expect("stdout")).lines();
    let mut kills = [1000, 2000, 3000, 4000].into_iter().peekable();
    let mut seen = String::new();
    let mut report = None;
    let mut native = addrs.native.clone();
    let mut current = addrs;
    for line in lines.map_while(Result::ok) {
        seen.push_str(&line);
        seen.push('\n');
        let acked = line
            .strip_prefix("acked ")
            .and_then(|n| n.parse::<usize>().ok());
        if let (Some(n), Some(k)) = (acked, kills.peek()) {
            if n >= *k {
                kills.next();
                kill_9(&mut server);
                let (s, a) = common::serve_on(&data, None, "127.0.0.1:0", &mqtt);
                server = s;
                native = a.native.clone();
                current = a;
            }
        }
        if let Some(j) = line.strip_prefix("result ") {
            report = Some(serde_json::from_str::<serde_json::Value>(j).expect("report"));
        }
    }
    let status = run.wait().expect("wait");
    let mut stderr = String::new();
    if let Some(mut e) = run.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(
        status.success() && kills.peek().is_none(),
        "the run failed or ended before 4 restarts:\n{seen}\n{stderr}"
    );
    let report = report.unwrap_or_else(|| panic!("no report:\n{seen}"));
    eprintln!("sub_qos {sub_qos}: {report}");
    // What the clients said along the way (reconnects, a session lost), for a failure's report.
    eprintln!(
        "client output:\n{seen}\nthe last server's log:\n{}",
        current.log_tail()
    );
    // What the log holds: every message stored exactly once.
    let out = common::brook()
        .args(["consume", "--topic", "mqtt", "--format", "json"])
        .env("BROOK_BROKER", &native)
        .output()
        .expect("brook consume");
    let json = ok(out, "brook consume");
    let mut stored = std::collections::HashMap::new();
    for line in json.lines() {
        let r: serde_json::Value = serde_json::from_str(line).expect("json line");
        let value = r["value"].as_str().expect("value").to_string();
        *stored.entry(value).or_insert(0) += 1;
    }
    kill_9(&mut server);
    assert_eq!(report["acked"], COUNT, "{report}");
    for n in 0..COUNT {
        assert_eq!(
            stored.get(&n.to_string()).copied(),
            Some(1),
            "message {n} stored once"
        );
    }
    (report, stored)
}

/// QoS 2 across 4 crashes: every acknowledged message reaches each persistent subscriber (3.1.1
/// and 5.0) exactly once, and is stored exactly once.
#[test]
fn qos2_is_exactly_once_across_kill_9() {
    let (report, _) = delivery_across_kill_9(2);
    for (name, r) in report["subscribers"].as_object().expect("subscribers") {
        assert_eq!(r["distinct"], 5000, "{name}: every message: {report}");
        assert_eq!(r["duplicates"], 0, "{name}: exactly once: {report}");
        assert!(
            r["epochs"].as_u64().unwrap_or(0) >= 5,
            "{name}: reconnected after every restart: {report}"
        );
    }
}

/// QoS 1 across 4 crashes: every message arrives, and what arrives again after a crash was in
/// flight then: at most the in-flight window (mqtt.max_inflight, 64) per crash.
#[test]
fn qos1_redelivers_at_most_the_window_across_kill_9() {
    let (report, _) = delivery_across_kill_9(1);
    for (name, r) in report["subscribers"].as_object().expect("subscribers") {
        assert_eq!(r["distinct"], 5000, "{name}: every message: {report}");
        for (epoch, dups) in r["dups_by_epoch"].as_object().expect("dups") {
            assert!(
                dups.as_u64().unwrap_or(u64::MAX) <= 64,
                "{name}: {dups} re-deliveries after restart {epoch}: {report}"
            );
        }
    }
}
