//! Every board profile is a valid config (`brook config check`, through the binary) and its
//! systemd unit has what the board README promises.

use crate::common;

/// The oldest systemd each board's supported systems ship (README, "Install"): Pi OS Buster
/// 241, Bullseye 247, Bookworm 252; Ubuntu 18.04 (JetPack 4) 237, 20.04 (JetPack 5) 245,
/// 22.04 249; Debian 11 247.
const OLDEST_SYSTEMD: [(&str, u32); 5] = [
    ("jetson-orin-nano", 237),
    ("pi-zero-2w", 241),
    ("pi4", 241),
    ("pi5", 252),
    ("x86-gateway", 247),
];

#[test]
fn every_board_profile_passes_config_check() {
    let boards = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("boards");
    let tmp = tempfile::tempdir().expect("tempdir");
    // The gateway profiles name /etc/brook/users, which `config check` reads: here a users
    // file made by `brook passwd` stands in for it.
    let users = tmp.path().join("users");
    common::auth::brook_passwd(&users, "sensor-1", "a long enough password");
    let mut checked = Vec::new();
    let mut lan = Vec::new();
    for entry in std::fs::read_dir(&boards).expect("boards/") {
        let dir = entry.expect("entry").path();
        if !dir.is_dir() {
            continue;
        }
        let name = dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(dir.join("brook.toml")).expect("profile");
        let config = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            text.replace(
                "\"/etc/brook/users\"",
                &format!("{:?}", users.display().to_string()),
            ),
        )
        .expect("write profile");
        let out = common::brook()
            .args(["config", "check"])
            .arg(&config)
            .output()
            .expect("run brook config check");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let unit = std::fs::read_to_string(dir.join("brook.service")).expect("unit");
        for line in [
            "Type=notify",
            "Restart=always",
            "WatchdogSec=",
            "User=brook",
            "StateDirectory=brook",
            "MemoryMax=",
            "ProtectSystem=strict",
            "ExecStart=/usr/bin/brook serve --config /etc/brook/brook.toml",
            "ExecReload=/bin/kill -HUP $MAINPID",
        ] {
            assert!(unit.contains(line), "{name}: brook.service lacks {line}");
        }
        let (_, oldest) = OLDEST_SYSTEMD
            .iter()
            .find(|(b, _)| *b == name)
            .unwrap_or_else(|| panic!("{name}: add its oldest systemd to OLDEST_SYSTEMD"));
        if *oldest < 247 {
            assert!(
                !unit
                    .lines()
                    .any(|l| l.starts_with("LoadCredential") || l.starts_with("DynamicUser")),
                "{name}: its systems ship systemd {oldest}; credentials need 247"
            );
        }
        // A profile open to the LAN names a users file.
        let c = brook::config::Config::load(&config).expect("profile loads");
        let l = &c.listeners;
        let on_lan = [&l.native, &l.mqtt, &l.native_tls, &l.mqtt_tls]
            .iter()
            .any(|a| !a.is_empty() && !a.starts_with("127."));
        if on_lan {
            assert!(
                c.auth.users_file.is_some(),
                "{name}: listens on the LAN without auth.users_file"
            );
            lan.push(name.clone());
        }
        checked.push(name);
    }
    lan.sort();
    assert_eq!(
        lan,
        ["jetson-orin-nano", "pi4", "pi5", "x86-gateway"],
        "the gateway profiles listen on the LAN (boards/README.md)"
    );
    checked.sort();
    assert_eq!(
        checked,
        [
            "jetson-orin-nano",
            "pi-zero-2w",
            "pi4",
            "pi5",
            "x86-gateway"
        ]
    );
}

/// Every unit the repository ships (the board profiles and the Debian package's) passes
/// `systemd-analyze verify` without a warning. The binary's path is the test build's: verify
/// wants the executable to exist.
#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut units: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("boards"))
        .expect("boards/")
        .filter_map(|e| {
            let p = e.expect("entry").path().join("brook.service");
            p.exists().then_some(p)
        })
        .collect();
    units.push(root.join("packaging/debian/brook.service"));
    let brook_bin = env!("CARGO_BIN_EXE_brook");
    let tmp = tempfile::tempdir().expect("tempdir");
    for unit in &units {
        let text = std::fs::read_to_string(unit).expect("unit");
        assert!(text.contains("/usr/bin/brook "), "{}", unit.display());
        let copy = tmp.path().join("brook.service");
        std::fs::write(
            &copy,
            text.replace("/usr/bin/brook ", &format!("{brook_bin} ")),
        )
        .expect("write unit");
        let out = common::auth::require("systemd-analyze", "apt-get install systemd")
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("run systemd-analyze");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{}: {err}",
            unit.display()
        );
    }
}
