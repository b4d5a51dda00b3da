//! Every board profile is a valid config (`brook config check`, through the binary) and its
//! systemd unit has what the board README promises.

use crate::common;

#[test]
fn every_board_profile_passes_config_check() {
    let boards = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("boards");
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
        let config = dir.join("brook.toml");
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
            "DynamicUser=yes",
            "StateDirectory=brook",
            "MemoryMax=",
            "ProtectSystem=strict",
            "ExecStart=/usr/local/bin/brook serve --config /etc/brook/brook.toml",
        ] {
            assert!(unit.contains(line), "{name}: brook.service lacks {line}");
        }
        // A profile open to the LAN names a users file; one read from the unit's credentials
        // has the LoadCredential= line that puts it there.
        let c = brook::config::Config::load(&config).expect("profile loads");
        let l = &c.listeners;
        let on_lan = [&l.native, &l.mqtt, &l.native_tls, &l.mqtt_tls]
            .iter()
            .any(|a| !a.is_empty() && !a.starts_with("127."));
        if on_lan {
            let users =
                c.auth.users_file.as_ref().unwrap_or_else(|| {
                    panic!("{name}: listens on the LAN without auth.users_file")
                });
            if let Ok(cred) = users.strip_prefix("/run/credentials/brook.service") {
                let line = format!("LoadCredential={}:/etc/brook/", cred.display());
                assert!(unit.contains(&line), "{name}: brook.service lacks {line}");
            }
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
