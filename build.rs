//! Build facts for `brook --version`: the git commit (`unknown` outside a git checkout), the
//! target triple and the cargo profile (`dist`, `release`, `dev` as `debug`, ...); and for
//! release-like builds, the code layout of link/order.ld, linked by LLD.

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
    // links: GNU ld takes the script too but needs many minutes to match its patterns, so a
    // build whose linker is GNU ld is switched to an LLD that is at hand, and goes without the
    // layout when there is none.
    if std::env::var("PROFILE").as_deref() == Ok("release")
        && std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
    {
        match lld_link_args(&target, Path::new(&out_dir)) {
            Some(args) => {
                let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
                let script = Path::new(&dir).join("link/order.ld");
                println!("cargo:rerun-if-changed={}", script.display());
                for arg in args {
                    println!("cargo:rustc-link-arg-bin=brook={arg}");
                }
                println!("cargo:rustc-link-arg-bin=brook=-Wl,-T,{}", script.display());
            }
            None => println!(
                "cargo:warning=no LLD to link with: built without the code layout of \
                 link/order.ld (idle RSS about 3 MiB larger); `apt-get install lld` adds it"
            ),
        }
    }
    println!("cargo:rustc-env=BROOK_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=BROOK_TARGET={target}");
    println!("cargo:rustc-env=BROOK_PROFILE={profile}");
}

/// The link arguments under which this build links with LLD, or `None` if it cannot: none
/// when its linker already is LLD (rustup's Rust on x86_64 Linux since 1.90, Zig for
/// cross/build.sh); `-fuse-ld=lld` when the C compiler that links finds an `ld.lld` (Debian's
/// `lld` package, for Debian's rustc or a cross gcc); or rustup's own LLD through the
/// `gcc-ld` folder of its sysroot (rustup's Rust before 1.90). Each is tried by linking an
/// empty program as the build's binaries are linked (the same rustc, target, linker and flags)
/// and looking for the mark LLD leaves in it.
fn lld_link_args(target: &str, out_dir: &Path) -> Option<Vec<String>> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let (source, probe) = (out_dir.join("probe.rs"), out_dir.join("probe"));
    std::fs::write(&source, "fn main() {}\n").ok()?;
    let links_with_lld = |args: &[String]| {
        let mut cmd = Command::new(&rustc);
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
        cmd.args(args.iter().map(|a| format!("-Clink-arg={a}")));
        let _ = std::fs::remove_file(&probe);
        let lld = cmd.output().is_ok_and(|o| o.status.success())
            && std::fs::read(&probe).is_ok_and(|b| linked_by_lld(&b));
        let _ = std::fs::remove_file(&probe);
        lld
    };
    let fuse_lld = || vec!["-fuse-ld=lld".to_string()];
    // rustup's LLD, beside its rustc in the sysroot.
    let rustup_lld = || {
        let out = Command::new(&rustc)
            .args(["--print", "sysroot"])
            .output()
            .ok()?;
        let sysroot = String::from_utf8(out.stdout).ok()?;
        let host = std::env::var("HOST").ok()?;
        let gcc_ld = Path::new(sysroot.trim()).join(format!("lib/rustlib/{host}/bin/gcc-ld"));
        gcc_ld
            .join("ld.lld")
            .exists()
            .then(|| vec![format!("-B{}", gcc_ld.display()), "-fuse-ld=lld".into()])
    };
    if links_with_lld(&[]) {
        Some(vec![])
    } else if links_with_lld(&fuse_lld()) {
        Some(fuse_lld())
    } else {
        rustup_lld().filter(|args| links_with_lld(args))
    }
}

/// Whether a binary carries LLD's mark in its `.comment` section: `Linker: LLD 20.1.8`, or with
/// a vendor's name before it (`Linker: Debian LLD 14.0.6`).
fn linked_by_lld(binary: &[u8]) -> bool {
    const MARK: &[u8] = b"Linker: ";
    binary.windows(MARK.len()).enumerate().any(|(at, w)| {
        w == MARK && {
            let rest = &binary[at + MARK.len()..];
            let line = &rest[..rest
                .iter()
                .position(|&c| c == 0)
                .unwrap_or(rest.len())
                .min(64)];
            line.windows(4).any(|w| w == b"LLD ")
        }
    })
}
