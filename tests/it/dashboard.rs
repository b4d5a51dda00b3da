//! The Grafana dashboard in `dashboards/grafana-brook.json` against a real `brook serve`: every
//! metric its expressions query is one Brook exports, and every label it groups or selects by
//! is one those series carry.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::common;

/// Metric families in a Prometheus exposition, with the label names their series carry.
fn families(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            out.entry(name.to_string()).or_default();
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.entry(format!("{name}{suffix}")).or_default();
                }
            }
        } else if !line.starts_with('#') {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let labels = line[name.len()..]
                .strip_prefix('{')
                .and_then(|l| l.split('}').next())
                .unwrap_or("");
            let set = out.entry(name).or_default();
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                if let Some((k, _)) = pair.split_once('=') {
                    set.insert(k.to_string());
                }
            }
        }
    }
    out
}

fn identifiers(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("brook_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.push(name);
    }
    out
}

/// Label names an expression groups by (`by (a, b)`) or selects on (`{a="..."}`), besides
/// `instance` and `le`, which Prometheus and histograms supply.
fn labels(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for part in expr.split("by (").skip(1) {
        for l in part.split(')').next().unwrap_or("").split(',') {
            out.insert(l.trim().to_string());
        }
    }
    for part in expr.split('{').skip(1) {
        for pair in part.split('}').next().unwrap_or("").split(',') {
            if let Some((k, _)) = pair.split_once(['=', '!']) {
                out.insert(k.trim_end_matches('~').trim().to_string());
            }
        }
    }
    out.retain(|l| !l.is_empty() && l != "instance" && l != "le");
    out
}

#[test]
fn every_metric_the_grafana_dashboard_queries_exists() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/grafana-brook.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addrs) = common::serve(&dir.path().join("data"));
    // Some traffic, so the per-topic and per-group series exist to check labels against.
    let created = common::brook()
        .args(["topics", "create", "dash"])
        .env("BROOK_BROKER", &addrs.native)
        .output()
        .expect("brook topics create");
    assert!(created.status.success(), "{created:?}");
    common::mirror::produce(&common::mirror::runtime(), &addrs.native, "dash", 0, 10);
    let out = common::brook()
        .args([
            "consume", "--topic", "dash", "--group", "board", "--count", "5",
        ])
        .env("BROOK_BROKER", &addrs.native)
        .output()
        .expect("brook consume");
    assert!(out.status.success(), "{out:?}");
    let metrics = common::http_raw(&addrs.http, "/metrics");
    let _ = server.kill();
    let _ = server.wait();
    let have = families(&metrics);
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "a dashboard, not a stub");
    let mut checked = 0;
    for p in panels {
        let title = p["title"].as_str().expect("title");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let names = identifiers(expr);
            assert!(!names.is_empty(), "{title}: {expr} queries no Brook metric");
            for name in &names {
                let Some(carried) = have.get(name) else {
                    panic!("{title}: {expr}: Brook exports no {name}");
                };
                // Labels are checked where the metric has series with labels now.
                if !carried.is_empty() {
                    for l in labels(expr) {
                        assert!(
                            carried.contains(&l),
                            "{title}: {expr}: {name} has no label {l} ({carried:?})"
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "{checked} metric references checked");
}
