//! Mirrors reaching secured upstreams, with certificates made here (rcgen): an MQTT mirror to
//! Mosquitto over TLS with a password, a Kafka mirror to tansu over TLS (socat in front) with
//! SASL SCRAM-SHA-256, a Brook mirror to another Brook over mutual TLS. A mirror with the wrong
//! CA, certificate or password beside each good one backs off with the refusal as its last
//! error and sends nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use brook::client::Client;

use crate::common;
use crate::common::mirror::*;
use crate::common::pki::pki;

fn create_topic(rt: &tokio::runtime::Runtime, native: &str, topic: &str) {
    rt.block_on(async {
        let c = Client::connect(native, "t").await.expect("connect");
        c.create_topic(
            topic,
            brook::proto::TopicSettings {
                partitions: Some(1),
                ..Default::default()
            },
        )
        .await
        .expect("create");
    });
}

fn write_config(dir: &Path, mirrors: &str) -> std::path::PathBuf {
    let cfg = dir.join("brook.toml");
    std::fs::write(
        &cfg,
        format!("[log]\nflush_interval = \"100ms\"\nmin_free = 0\n\n{mirrors}"),
    )
    .expect("config");
    cfg
}

/// The MQTT mirror reaches Mosquitto over TLS (trusting the test CA) with a password; a
/// mirror trusting another CA is refused in the handshake. A subscriber over TLS sees every
/// record.
#[test]
fn mqtt_upstream_over_tls_with_a_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path());
    let rt = runtime();
    let up_addr = free_addr();
    let port = port_of(&up_addr);
    let mosq = dir.path().join("mosq");
    std::fs::create_dir_all(&mosq).expect("dir");
    let passwd = mosq.join("passwd");
    let made = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["gw1", "s3cret"])
        .status()
        .expect("mosquitto_passwd (apt-get install mosquitto)");
    assert!(made.success());
    // Mosquitto drops to its own user: it must be able to read these.
    for f in [&passwd, &pki.server_key] {
        let mut perms = std::fs::metadata(f).expect("file").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
        std::fs::set_permissions(f, perms).expect("chmod");
    }
    let mut up = start_mosquitto_with(
        &mosq,
        port,
        &format!(
            "allow_anonymous false\npassword_file {}\ncafile {}\ncertfile {}\nkeyfile {}\n",
            passwd.display(),
            pki.ca.display(),
            pki.server_cert.display(),
            pki.server_key.display()
        ),
    );
    let sub = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--cafile"])
        .arg(&pki.ca)
        .args(["-u", "gw1", "-P", "s3cret", "-t", "site/#", "-q", "1"])
        .args(["-C", "100", "-W", "90", "-i", "checker"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients)");
    std::fs::write(dir.path().join("password"), "s3cret\n").expect("password");
    let mirror = |name: &str, ca: &Path| {
        format!(
            "[[mirror]]\nname = \"{name}\"\nkind = \"mqtt\"\nupstream = [\"{up_addr}\"]\ntopics = [\"telemetry\"]\nnode = \"gw1\"\ntopic_template = \"site/{{node}}/{{key}}\"\nusername = \"gw1\"\npassword_file = {:?}\ntls = true\nca_file = {:?}\nbackoff_max = \"500ms\"\n",
            dir.path().join("password"),
            ca
        )
    };
    let cfg = write_config(
        dir.path(),
        &(mirror("good", &pki.ca) + &mirror("bad", &pki.rogue_ca)),
    );
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    create_topic(&rt, &laddrs.native, "telemetry");
    produce(&rt, &laddrs.native, "telemetry", 0, 100);
    for err in good_sent_bad_refused(&rt, &laddrs.http, 100) {
        assert!(err.to_lowercase().contains("certificate"), "{err}");
    }
    let out = sub.wait_with_output().expect("mosquitto_sub");
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(lines, 100, "records the TLS subscriber saw");
    kill_9(&mut local);
    stop(&mut up);
}

/// The Kafka mirror reaches tansu over TLS and logs in with SASL SCRAM-SHA-256 (a user made
/// with `tansu user create`); a mirror with the wrong password is refused. tansu has no TLS of
/// its own (0.6.0 builds an acceptor and never uses it), so Debian's socat terminates TLS in
/// front of it, the usual stunnel-style deployment, and tansu advertises socat's address.
/// Read back with rskafka over the same TLS, logged in.
#[test]
fn kafka_upstream_over_tls_with_sasl_scram() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path());
    let rt = runtime();
    let (plain_addr, tls_addr) = (free_addr(), free_addr());
    let tansu_dir = dir.path().join("tansu");
    // The user goes into tansu's store while it runs without authentication.
    let mut up = start_tansu(&tansu_dir, &plain_addr);
    let made = std::process::Command::new(tansu())
        .args(["user", "create", "--broker", &format!("tcp://{plain_addr}")])
        .args(["--mechanism", "scram256", "gw1", "s3cret"])
        .status()
        .expect("tansu user create");
    assert!(made.success(), "tansu user create");
    stop(&mut up);
    let mut up = start_tansu_with(&tansu_dir, &plain_addr, &tls_addr, &["--authentication"]);
    let mut proxy = common::Process::new(
        std::process::Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                port_of(&tls_addr),
                pki.server_cert.display(),
                pki.server_key.display()
            ))
            .arg(format!("TCP:{plain_addr}"))
            .spawn()
            .expect("socat (apt-get install socat)"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&tls_addr).is_err() {
        assert!(Instant::now() < deadline, "socat did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(dir.path().join("good"), "s3cret\n").expect("password");
    std::fs::write(dir.path().join("bad"), "guess\n").expect("password");
    let mirror = |name: &str, topic: &str| {
        format!(
            "[[mirror]]\nname = \"{name}\"\nkind = \"kafka\"\nupstream = [\"{tls_addr}\"]\ntopics = [\"{topic}\"]\nnode = \"gw1\"\ntls = true\nca_file = {:?}\nusername = \"gw1\"\npassword_file = {:?}\nsasl_mechanism = \"scram-sha-256\"\nbackoff_max = \"500ms\"\n",
            pki.ca,
            dir.path().join(name)
        )
    };
    let cfg = write_config(
        dir.path(),
        &(mirror("good", "telemetry") + &mirror("bad", "other")),
    );
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    create_topic(&rt, &laddrs.native, "telemetry");
    create_topic(&rt, &laddrs.native, "other");
    produce(&rt, &laddrs.native, "telemetry", 0, 200);
    produce(&rt, &laddrs.native, "other", 0, 10);
    for err in good_sent_bad_refused(&rt, &laddrs.http, 200) {
        assert!(err.contains("connect"), "{err}");
    }
    let tls = std::sync::Arc::new(
        brook::net::tls::client_config(&pki.ca, None).expect("client TLS config"),
    );
    let sasl = rskafka::client::SaslConfig::ScramSha256(rskafka::client::Credentials::new(
        "gw1".into(),
        "s3cret".into(),
    ));
    let got = kafka_records_as(
        &rt,
        "brook.",
        &tls_addr,
        Some(tls),
        Some(sasl),
        "telemetry",
        200,
    );
    check_complete(&got, 200);
    kill_9(&mut local);
    kill_9(&mut proxy);
    kill_9(&mut up);
}

/// The Brook mirror reaches another Brook over mutual TLS: the upstream requires a client
/// certificate from its CA; a mirror presenting one from another CA is refused.
#[test]
fn brook_upstream_over_mutual_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path());
    let rt = runtime();
    let up_cfg = dir.path().join("up.toml");
    std::fs::write(
        &up_cfg,
        format!(
            "[listeners]\nnative_tls = \"127.0.0.1:0\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\nrequire_client_cert = true\n",
            pki.server_cert, pki.server_key, pki.ca
        ),
    )
    .expect("upstream config");
    let (mut up, uaddrs) = common::serve_with(&dir.path().join("up"), Some(&up_cfg), "127.0.0.1:0");
    let tls_addr = {
        let log = uaddrs.log_tail();
        let start = log.find("native_tls=").expect("native_tls in the log") + "native_tls=".len();
        log[start..]
            .split_whitespace()
            .next()
            .expect("address")
            .to_string()
    };
    let mirror = |name: &str, topic: &str, cert: &Path, key: &Path| {
        format!(
            "[[mirror]]\nname = \"{name}\"\nkind = \"brook\"\nupstream = [\"{tls_addr}\"]\ntopics = [\"{topic}\"]\nnode = \"gw1\"\ntls = true\nca_file = {:?}\ncert_file = {cert:?}\nkey_file = {key:?}\nbackoff_max = \"500ms\"\n",
            pki.ca
        )
    };
    let cfg = write_config(
        dir.path(),
        &(mirror("good", "telemetry", &pki.client_cert, &pki.client_key)
            + &mirror("bad", "other", &pki.rogue_cert, &pki.rogue_key)),
    );
    let (mut local, laddrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    create_topic(&rt, &laddrs.native, "telemetry");
    create_topic(&rt, &laddrs.native, "other");
    produce(&rt, &laddrs.native, "telemetry", 0, 300);
    produce(&rt, &laddrs.native, "other", 0, 10);
    for err in good_sent_bad_refused(&rt, &laddrs.http, 300) {
        assert!(err.contains("connect"), "{err}");
    }
    let got = upstream_records(&rt, "brook.", &uaddrs.native, "telemetry", 1, 300);
    check_complete(&got, 300);
    kill_9(&mut local);
    kill_9(&mut up);
}
