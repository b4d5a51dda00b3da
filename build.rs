//! Build facts for `brook --version`: the git commit (`unknown` outside a git checkout), the
//! target triple and the cargo profile (`dist`, `release`, `dev` as `debug`, ...).

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
    println!("cargo:rustc-env=BROOK_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=BROOK_TARGET={target}");
    println!("cargo:rustc-env=BROOK_PROFILE={profile}");
}
