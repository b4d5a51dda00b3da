//! Build facts for `brook --version`: the git commit (`unknown` outside a git checkout), the
//! target triple and the cargo profile (`dist`, `release`, `dev` as `debug`, ...); and for
//! release-like builds linked by LLD, the code layout of link/order.ld.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    // The commit checked out (uncommitted edits are not marked: build.rs does not run again
    // when a source file changes).
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // A new commit or a checkout changes these.
    if let Some(p) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={p}");
    }
    if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &head]) {
            if Path::new(&p).exists() {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    // OUT_DIR is TARGET_DIR/[TRIPLE/]PROFILE/build/brook-HASH/out.
    let out_dir = std::env::var("OUT_DIR").unwrap_or_default();
    let profile = Path::new(&out_dir)
        .ancestors()
        .nth(3)
        .and_then(|p| p.file_name())
        .map_or_else(
            || std::env::var("PROFILE").unwrap_or_default(),
            |n| n.to_string_lossy().into_owned(),
        );
    let target = std::env::var("TARGET").unwrap_or_default();
    // Release-like builds (release, dist) of the `brook` binary place the functions it runs at
    // start, when idle and on its data path first and together (link/order.ld, made by
    // link/order.sh): idle RSS 9.3 -> 6.0 MiB here, BENCHMARKS.md "Code layout". Only when LLD
    // links (rustup's Rust on x86_64 Linux since 1.90, and Zig for cross/build.sh): GNU ld
    // takes the script too but needs many minutes to match its patterns.
    if std::env::var("PROFILE").as_deref() == Ok("release")
        && std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && links_with_lld(&target, Path::new(&out_dir))
    {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
        let script = Path::new(&dir).join("link/order.ld");
        println!("cargo:rerun-if-changed={}", script.display());
        println!("cargo:rustc-link-arg-bin=brook=-Wl,-T,{}", script.display());
    }
    println!("cargo:rustc-env=BROOK_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=BROOK_TARGET={target}");
    println!("cargo:rustc-env=BROOK_PROFILE={profile}");
}

/// Whether this build's linker is LLD: links an empty program as the build's binaries are
/// linked (the same rustc, target, linker and flags) and looks for the mark LLD leaves in it.
fn links_with_lld(target: &str, out_dir: &Path) -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let (source, probe) = (out_dir.join("probe.rs"), out_dir.join("probe"));
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let mut cmd = Command::new(rustc);
    cmd.arg("--target")
        .arg(target)
        .arg("-o")
        .arg(&probe)
        .arg(&source);
    if let Ok(linker) = std::env::var("RUSTC_LINKER") {
        cmd.arg(format!("-Clinker={linker}"));
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    cmd.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    let linked = cmd.output().is_ok_and(|o| o.status.success());
    let lld =
        linked && std::fs::read(&probe).is_ok_and(|b| b.windows(11).any(|w| w == b"Linker: LLD"));
    let _ = std::fs::remove_file(&probe);
    lld
}
