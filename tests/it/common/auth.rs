//! Users, ACLs and the peers' helpers shared by the security and TLS tests.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The ACL the security and TLS tests use.
pub const ACL: &str = r##"
[[rule]]
user = "sensor-*"
publish = ["sensors/%u/#"]
subscribe = ["commands/%c/#", "public/+"]
produce = ["telemetry"]
consume = ["telemetry"]
groups = ["g-%u"]

[[rule]]
user = "ops"
publish = ["commands/#", "public/#"]
subscribe = ["#"]
produce = ["*"]
consume = ["*"]
groups = ["*"]
admin = true

[[rule]]
user = "anonymous"
subscribe = ["public/#"]
"##;

pub const TOKEN: &str = "test-token-0123456789";

pub fn require(program: &str, install: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{program} is missing: {install} (tests/run.sh installs it)"
    );
    Command::new(program)
}

pub fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `brook passwd FILE USER` with the password on standard input.
pub fn brook_passwd(file: &Path, user: &str, password: &str) {
    let mut child = super::brook()
        .arg("passwd")
        .arg(file)
        .arg(user)
        .args(["--iterations", "1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn brook passwd");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write password");
    ok(child.wait_with_output().expect("wait"), "brook passwd");
}

/// A users file with sensor-1 (written by Mosquitto's own mosquitto_passwd) and ops (written
/// by `brook passwd`), the ACL, the HTTP token; returns the config's path.
pub fn secured_config(dir: &Path, allow_anonymous: Option<bool>) -> PathBuf {
    let users = dir.join("users");
    ok(
        require("mosquitto_passwd", "apt-get install mosquitto")
            .arg("-c")
            .arg("-b")
            .arg(&users)
            .args(["sensor-1", "pw-sensor"])
            .output()
            .expect("mosquitto_passwd"),
        "mosquitto_passwd",
    );
    brook_passwd(&users, "ops", "pw-ops");
    std::fs::write(dir.join("acl.toml"), ACL).expect("acl");
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).expect("token");
    let anonymous = allow_anonymous.map_or(String::new(), |a| format!("allow_anonymous = {a}\n"));
    let config = dir.join("brook.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nusers_file = {:?}\nacl_file = {:?}\nhttp_token_file = {:?}\n{anonymous}failed_login_delay = \"50ms\"\nlogin_backoff = \"0s\"\n",
            users,
            dir.join("acl.toml"),
            dir.join("token"),
        ),
    )
    .expect("config");
    config
}

pub fn metric(body: &str, line_prefix: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_prefix} in metrics"))
}

pub fn http(addr: &str, path: &str, token: Option<&str>) -> Result<String, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(brook::client::http_get(addr, path, token))
        .map_err(|e| e.to_string())
}

pub fn python() -> String {
    let python = std::env::var("BROOK_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_paho = Command::new(&python)
        .args(["-c", "import paho.mqtt"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_paho,
        "paho-mqtt is missing for {python}: run tests/run.sh (it makes a venv with paho-mqtt and sets BROOK_TEST_PYTHON)"
    );
    python
}

pub fn port(addr: &str) -> String {
    addr.rsplit(':').next().expect("port").to_string()
}
