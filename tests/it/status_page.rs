//! The status page in a real browser: headless Chromium (Debian's `chromium-headless-shell`)
//! opens `/` of a running `brook serve` and the tests check what the page shows once its script
//! has filled it in (the DOM Chromium dumps). The first runs with live traffic, a consumer group
//! behind, an MQTT client connected and its mirror's upstream killed, and saves screenshots (a
//! desktop's and a phone's width) under `target/status-page/`, which CI keeps; the second shows a
//! degraded broker's reasons behind the HTTP token.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use brook::client::Client;

use crate::common;
use crate::common::mirror::{free_addr, kill_9, mirror_config, runtime};

/// Where the screenshots go (CI keeps them).
fn screenshot_dir() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("status-page");
    std::fs::create_dir_all(&target).expect("target/status-page");
    target
}

/// Runs headless Chromium on `url` with `args` (a fresh profile each time), bounded in time.
fn chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = common::auth::require(
        "chromium-headless-shell",
        "apt-get install chromium-headless-shell",
    );
    let mut child = cmd
        .args(["--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // Virtual time runs the page's script (its fetch of /api/status included) before the
        // dump or screenshot.
        .arg("--virtual-time-budget=4000")
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium-headless-shell");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "chromium did not finish within 60 s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("chromium output");
    assert!(
        out.status.success(),
        "chromium {args:?} {url}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page's DOM once its script rendered a report (retried while it still says "loading").
fn rendered(url: &str) -> String {
    for _ in 0..3 {
        let dom = chromium(url, &["--dump-dom"]);
        if !dom.contains(">loading<") {
            return dom;
        }
    }
    panic!("the page never rendered a report: {url}");
}

/// Saves a screenshot `name` at `width` x `height`; returns its path.
fn screenshot(url: &str, name: &str, width: u32, height: u32) -> PathBuf {
    let path = screenshot_dir().join(name);
    let _ = std::fs::remove_file(&path);
    chromium(
        url,
        &[
            &format!("--window-size={width},{height}"),
            &format!("--screenshot={}", path.display()),
        ],
    );
    let png = std::fs::read(&path).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        path.display()
    );
    path
}

/// The element that carries `marker` (an id or data attribute), up to its closing `</tag>`.
fn element<'a>(dom: &'a str, tag: &str, marker: &str) -> &'a str {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not on the page:\n{dom}"));
    let start = dom[..at].rfind(&format!("<{tag}")).expect("element start");
    let end = at + dom[at..].find(&format!("</{tag}>")).expect("element end");
    &dom[start..end]
}

/// The text of each cell of the table row carrying `marker`.
fn cells(dom: &str, marker: &str) -> Vec<String> {
    element(dom, "tr", marker)
        .split("<td")
        .skip(1)
        .map(|c| {
            let text = &c[c.find('>').expect("td") + 1..];
            text.split("</td>").next().unwrap_or("").to_string()
        })
        .collect()
}

/// The text inside the element with `id`.
fn text_of(dom: &str, tag: &str, id: &str) -> String {
    let e = element(dom, tag, &format!("id=\"{id}\""));
    let text = &e[e.find('>').expect("tag") + 1..];
    text.to_string()
}

/// A count as the page shows it ("812", "12.3 k", "1.20 M"); None when it is not one.
fn count(shown: &str) -> Option<f64> {
    let (n, scale) = match shown.split_once(' ') {
        Some((n, "k")) => (n, 1e3),
        Some((n, "M")) => (n, 1e6),
        _ => (shown, 1.0),
    };
    n.parse::<f64>().ok().map(|n| n * scale)
}

fn status(rt: &tokio::runtime::Runtime, http: &str, token: Option<&str>) -> serde_json::Value {
    let body = rt
        .block_on(brook::client::http_get(http, "/api/status", token))
        .expect("/api/status");
    serde_json::from_str(&body).expect("status json")
}

fn await_status(
    rt: &tokio::runtime::Runtime,
    http: &str,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let s = status(rt, http, None);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_status_page_shows_traffic_lag_clients_and_an_upstream_outage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let up_addr = free_addr();
    let cfg = mirror_config(dir.path(), "brook", &up_addr);
    let (mut up, _) = common::serve_with(&dir.path().join("up"), None, &up_addr);
    let (mut local, addrs) =
        common::serve_with(&dir.path().join("local"), Some(&cfg), "127.0.0.1:0");
    let native = addrs.native.clone();
    rt.block_on(async {
        let c = Client::connect(&native, "setup").await.expect("connect");
        let settings = brook::proto::TopicSettings {
            partitions: Some(2),
            ..Default::default()
        };
        c.create_topic("telemetry", settings).await.expect("create");
        c.create_topic("idle", Default::default())
            .await
            .expect("create");
    });
    // Live traffic: 20 records every 50 ms until the test ends.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, native) = (Arc::clone(&stop), native.clone());
        std::thread::spawn(move || {
            runtime().block_on(async {
                let c = Arc::new(Client::connect(&native, "sensor").await.expect("connect"));
                let mut p =
                    brook::client::Producer::new(c, "telemetry", brook::proto::Acks::Durable)
                        .await
                        .expect("producer");
                let mut i = 0u64;
                let now_ms = || {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64)
                };
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..20 {
                        let r = brook::log::Record {
                            timestamp: now_ms(),
                            key: Some(format!("k{}", i % 7).into_bytes()),
                            value: Some(format!("reading {i}").into_bytes()),
                            headers: Vec::new(),
                        };
                        p.send(None, &r).await.expect("send");
                        i += 1;
                    }
                    p.flush().await.expect("flush");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
    };
    // A group that read 10 records of partition 0 and stopped.
    rt.block_on(async {
        let c = Client::connect(&native, "reporting")
            .await
            .expect("connect");
        c.commit_offsets("reporting", None, &[("telemetry", 0, 10)])
            .await
            .expect("commit");
    });
    // An MQTT client, connected with a persistent session.
    let mqtt_port = addrs.mqtt.rsplit(':').next().expect("port").to_string();
    let _viewer = common::Process::new(
        common::auth::require("mosquitto_sub", "apt-get install mosquitto-clients")
            .args([
                "-p",
                &mqtt_port,
                "-i",
                "viewer",
                "-c",
                "-q",
                "1",
                "-t",
                "sensors/#",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("mosquitto_sub"),
    );
    await_status(&rt, &addrs.http, "mirror up, client connected", |s| {
        let m = s["mirrors"].as_array().expect("mirrors");
        m.len() == 2
            && m.iter().all(|r| r["state"] == "connected")
            && s["clients"]["mqtt_connections"] == 1
    });
    // The upstream dies: the mirror retries and the backlog grows with the traffic.
    kill_9(&mut up);
    let s = await_status(&rt, &addrs.http, "outage seen, a rate sampled", |s| {
        let m = s["mirrors"].as_array().expect("mirrors");
        m.iter()
            .all(|r| r["state"] == "backing_off" && r["backlog_records"].as_u64() > Some(20))
            && s["history"]["samples"]
                .as_array()
                .is_some_and(|h| h.iter().any(|x| x["records_per_sec"].as_f64() > Some(0.0)))
    });

    let url = format!("http://{}/", addrs.http);
    let dom = rendered(&url);
    let fail = |what: &str| format!("{what}\nstatus: {s:#}\npage:\n{dom}");
    assert!(
        dom.contains("id=\"badge\" class=\"badge ok\">healthy<"),
        "{}",
        fail("badge")
    );
    assert!(
        dom.contains("id=\"stale\" style=\"display: none;\""),
        "{}",
        fail("stale")
    );
    // Topics: the live one has a rate; the idle one has none.
    let t = cells(&dom, "data-topic=\"telemetry\"");
    assert_eq!(t[0], "telemetry", "{}", fail("topic row"));
    assert_eq!(t[1], "2", "{}", fail("partitions"));
    assert!(count(&t[2]) > Some(0.0), "{}", fail("records/s"));
    assert!(
        t[4].ends_with("KiB") || t[4].ends_with(" B"),
        "{}",
        fail("size")
    );
    assert_eq!(t[7], "drops oldest", "{}", fail("on_full"));
    assert!(
        t[6].contains("GiB") || t[6].contains("MiB"),
        "{}",
        fail("headroom")
    );
    let idle = cells(&dom, "data-topic=\"idle\"");
    assert_eq!(idle[2], "0", "{}", fail("idle rate"));
    // Headroom lasts for ever for a topic that takes nothing; the live one's runs out.
    assert!(
        !idle[6].contains(" · ") && t[6].contains(" · "),
        "{}",
        fail("headroom time")
    );
    // The group is behind on partition 0.
    let g = cells(&dom, "data-group=\"reporting\"");
    assert!(count(&g[2]) > Some(0.0), "{}", fail("group lag"));
    assert_eq!(g[3], "telemetry", "{}", fail("group topics"));
    // Clients.
    assert_eq!(
        text_of(&dom, "td", "mqtt-connections"),
        "1",
        "{}",
        fail("mqtt")
    );
    assert_eq!(
        text_of(&dom, "td", "mqtt-sessions"),
        "1",
        "{}",
        fail("sessions")
    );
    // The mirror: both partitions down, retrying, with a backlog, its age and the error.
    let summary = text_of(&dom, "div", "mirror-detail");
    assert!(
        summary.starts_with("0 of 2 partitions up") && summary.contains("oldest"),
        "{}",
        fail("mirror summary")
    );
    assert!(
        text_of(&dom, "div", "mirror-backlog").ends_with(" unsent"),
        "{}",
        fail("backlog")
    );
    for p in 0..2 {
        let marker = format!(
            "data-mirror=\"up\" data-state=\"backing_off\"><td>up</td><td>telemetry/{p}</td>"
        );
        let r = cells(&dom, &marker);
        assert_eq!(r[2], "down, retrying", "{}", fail("mirror state"));
        assert!(count(&r[3]) > Some(0.0), "{}", fail("mirror backlog"));
        assert!(
            r[4].ends_with(" s") || r[4].contains("min"),
            "{}",
            fail("oldest unsent")
        );
        // Nothing drains while it is down: no rate, no ETA (not the rate from before).
        assert_eq!(
            (r[5].as_str(), r[6].as_str()),
            ("0", "–"),
            "{}",
            fail("drain, ETA")
        );
        assert!(
            r[7].contains("Connection refused"),
            "{}",
            fail("last error")
        );
    }
    // The charts of the last hour have lines.
    for chart in ["chart-ingest", "chart-free", "chart-backlog"] {
        let svg = element(&dom, "svg", &format!("id=\"{chart}\""));
        let points = svg
            .split("points=\"")
            .nth(1)
            .and_then(|p| p.split('"').next())
            .unwrap_or("");
        assert!(
            points.split(' ').count() >= 2,
            "{}",
            fail(&format!("{chart} has no line"))
        );
    }
    // The page itself: HTML that may load nothing from anywhere else.
    let answer = common::http_raw(&addrs.http, "/");
    assert!(answer.contains("Content-Type: text/html"), "{answer}");
    assert!(
        answer.contains("Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"),
        "{answer}"
    );
    // No address but the SVG namespace's (a name, never fetched).
    let addresses = answer.matches("http://").count() + answer.matches("https://").count();
    let svg_ns = answer.matches("\"http://www.w3.org/2000/svg\"").count();
    assert_eq!(addresses, svg_ns, "{answer}");
    assert!(
        !answer.contains(" src=") && !answer.contains(" href="),
        "{answer}"
    );
    let desktop = screenshot(&url, "desktop.png", 1280, 1400);
    let phone = screenshot(&url, "phone.png", 412, 1900);
    println!(
        "status page screenshots: {} {}",
        desktop.display(),
        phone.display()
    );
    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("traffic thread");
    kill_9(&mut local);
}

#[test]
fn the_status_page_names_why_it_is_degraded_and_asks_for_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let token = "status-page-token-0123456789";
    std::fs::write(dir.path().join("token"), format!("{token}\n")).expect("token");
    let cfg = dir.path().join("brook.toml");
    // A free-space floor no disk meets: degraded from the start.
    std::fs::write(
        &cfg,
        format!(
            "[log]\nmin_free = \"1000TB\"\n\n[auth]\nhttp_token_file = \"{}\"\n",
            dir.path().join("token").display()
        ),
    )
    .expect("config");
    let (mut local, addrs) =
        common::serve_with(&dir.path().join("data"), Some(&cfg), "127.0.0.1:0");
    // Without the token: a 401 that makes a browser ask for it, and no data.
    let answer = common::http_raw(&addrs.http, "/");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.contains("WWW-Authenticate: Basic realm=\"brook\""),
        "{answer}"
    );
    let answer = common::http_raw(&addrs.http, "/api/status");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let url = format!("http://{}/", addrs.http);
    let refused = chromium(&url, &["--dump-dom"]);
    assert!(refused.contains("a token is required"), "{refused}");
    assert!(!refused.contains("id=\"badge\""), "{refused}");
    let s = status(&rt, &addrs.http, Some(token));
    assert!(!s["health"].as_array().expect("health").is_empty(), "{s:#}");
    // With it, as a browser's Basic authentication (the token is the password).
    let url = format!("http://viewer:{token}@{}/", addrs.http);
    let dom = rendered(&url);
    assert!(
        dom.contains("class=\"badge bad\">degraded<"),
        "badge: {dom}"
    );
    let reasons = element(&dom, "ul", "id=\"reasons\"");
    assert!(reasons.contains("below min_free"), "{reasons}");
    assert!(
        !element(&dom, "section", "id=\"health\"").contains("hidden"),
        "{dom}"
    );
    assert!(text_of(&dom, "div", "disk-free").contains("free"), "{dom}");
    assert!(
        text_of(&dom, "div", "disk-detail").contains("min_free 909 TiB"),
        "{dom}"
    );
    kill_9(&mut local);
}
