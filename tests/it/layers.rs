//! The layers of `src/` point one way: no top-level module imports one that (directly or
//! through others) imports it. Read from the source: every `crate::<module>` path outside
//! comments, in every file of the library under `src/` (`lib.rs` and the binary in `src/bin/`
//! aside), is an edge from the file's top-level module to `<module>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read src") {
            let path = e.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src");
            let first = rel.iter().next().expect("a component").to_string_lossy();
            let top = first.trim_end_matches(".rs").to_string();
            if top == "bin" || top == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            let edges = g.entry(top.clone()).or_default();
            for line in text.lines() {
                let code = line.split("//").next().unwrap_or("");
                for part in code.split("crate::").skip(1) {
                    let name: String = part
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != top {
                        edges.insert(name);
                    }
                }
            }
        }
    }
    g
}

/// A cycle through `from`, if there is one: the modules on it in order.
fn cycle(
    g: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|m| m == from) {
        let mut c = path[i..].to_vec();
        c.push(from.to_string());
        return Some(c);
    }
    path.push(from.to_string());
    for next in g.get(from).into_iter().flatten() {
        if let Some(c) = cycle(g, next, path) {
            return Some(c);
        }
    }
    path.pop();
    None
}

#[test]
fn top_level_modules_import_each_other_one_way() {
    let g = graph();
    assert!(g.len() > 10, "modules found: {:?}", g.keys());
    for m in g.keys() {
        if let Some(c) = cycle(&g, m, &mut Vec::new()) {
            panic!("import cycle: {} (edges: {:#?})", c.join(" -> "), g);
        }
    }
    // The layers the architecture names, checked by name too.
    let imports = |a: &str, b: &str| g.get(a).is_some_and(|e| e.contains(b));
    for below in [
        "units",
        "log",
        "meta",
        "proto",
        "topic_filter",
        "net",
        "report",
    ] {
        for above in ["broker", "server", "mirror", "serve", "config", "client"] {
            assert!(!imports(below, above), "{below} imports {above}");
        }
    }
    for m in g.keys().filter(|m| *m != "serve") {
        assert!(
            !imports(m, "config"),
            "{m} imports config: give it its section instead"
        );
    }
    assert!(!imports("broker", "server") && !imports("broker", "mirror"));
    assert!(!imports("client", "broker") && !imports("client", "server"));
}
