//! Benchmarks behind `brook bench ...`. Each prints its figures (or one JSON object with
//! `--json`); the results are recorded with the machine and date in `BENCHMARKS.md`. Tests
//! check correctness, benchmarks check speed: nothing here asserts a speed.

pub mod mirror;
pub mod mqtt;
pub mod native;
pub mod password;
pub mod storage;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What every benchmark prints: a summary for people, or one JSON object (`--json`).
pub trait Report: serde::Serialize {
    fn render(&self) -> String;

    fn print(&self, json: bool) -> serde_json::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
        } else {
            print!("{}", self.render());
        }
        Ok(())
    }
}

/// `--tls DIR`: the benchmark's clients speak TLS, trusting `DIR/ca.pem`; a `brook serve` the
/// benchmark starts presents `DIR/server.pem` and `DIR/server.key` (valid for 127.0.0.1) on its
/// TLS listeners. Make them as README's "Securing Brook" shows.
#[derive(Clone, Debug)]
pub struct BenchTls {
    pub dir: PathBuf,
}

impl BenchTls {
    /// `--tls DIR`.
    pub fn parse(dir: &str) -> Result<BenchTls, std::convert::Infallible> {
        Ok(BenchTls { dir: dir.into() })
    }

    /// The client side: trusts `ca.pem`.
    pub fn client_config(&self) -> BenchResult<std::sync::Arc<rustls::ClientConfig>> {
        Ok(std::sync::Arc::new(brook::net::tls::client_config(
            &self.dir.join("ca.pem"),
            None,
        )?))
    }

    /// A config file turning on the native and MQTT TLS listeners with the server certificate;
    /// removed when the returned guard drops.
    fn server_config(&self, name: &str) -> BenchResult<TempFile> {
        let path = std::env::temp_dir().join(format!(
            "brook-bench-{name}-{}-tls.toml",
            std::process::id()
        ));
        let text = format!(
            "[listeners]\nnative_tls = \"127.0.0.1:0\"\nmqtt_tls = \"127.0.0.1:0\"\n\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            self.dir.join("server.pem"),
            self.dir.join("server.key")
        );
        std::fs::write(&path, text)?;
        Ok(TempFile(path))
    }
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where a benchmark's broker is: a `brook serve` child it started, or `--target`.
pub struct Broker {
    /// Keeps the child running (and removes its data directory) until dropped.
    pub _server: Option<ServerChild>,
    pub mqtt_addr: String,
    /// Process to read CPU time and memory of, when known.
    pub pid: Option<u32>,
    /// The clients' TLS settings (`--tls`), when the MQTT address is a TLS listener.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Broker {
    /// `target` (with `target_pid`) when given, else a fresh `brook serve` named `name`; over
    /// TLS with `tls`.
    pub fn mqtt(
        name: &str,
        target: Option<&str>,
        target_pid: Option<u32>,
        tls: Option<&BenchTls>,
    ) -> BenchResult<Broker> {
        let client_tls = tls.map(BenchTls::client_config).transpose()?;
        Ok(match target {
            Some(t) => Broker {
                _server: None,
                mqtt_addr: t.to_string(),
                pid: target_pid,
                tls: client_tls,
            },
            None => {
                let child = start_server_tls(name, None, tls)?;
                let mqtt_addr = match (&child.mqtt_tls_addr, tls) {
                    (Some(a), Some(_)) => a.clone(),
                    _ => child.mqtt_addr.clone(),
                };
                Broker {
                    mqtt_addr,
                    pid: Some(child.child.id()),
                    _server: Some(child),
                    tls: client_tls,
                }
            }
        })
    }
}

/// A client connection, plain or TLS, for the benchmarks' own lean clients.
pub trait BenchStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> BenchStream for T {}

/// Connects to `addr` (an IP address and port), over TLS with `tls`.
pub async fn connect_stream(
    addr: &str,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> BenchResult<Box<dyn BenchStream>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let Some(config) = tls else {
        return Ok(Box::new(stream));
    };
    let ip: std::net::SocketAddr = addr.parse()?;
    let name = rustls::pki_types::ServerName::IpAddress(ip.ip().into());
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(config))
        .connect(name, stream)
        .await?;
    Ok(Box::new(tls))
}

/// The `q` quantile (0..=1) of sorted `values`; 0 when empty.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    // A float to integer `as` saturates (and NaN gives 0): no wrap possible.
    #[allow(clippy::cast_possible_truncation)]
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or(0)
}

/// A `brook serve` child on ephemeral loopback ports, killed (and its data directory removed
/// when the bench made it) on drop.
pub struct ServerChild {
    pub child: Child,
    /// Native listener address.
    pub addr: String,
    pub mqtt_addr: String,
    pub http_addr: String,
    /// The TLS listeners' addresses, when the config turned them on.
    pub native_tls_addr: Option<String>,
    pub mqtt_tls_addr: Option<String>,
    dir: PathBuf,
    remove_dir: bool,
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// [`start_server`] with the native and MQTT TLS listeners on when `tls` is given.
pub fn start_server_tls(
    name: &str,
    dir: Option<PathBuf>,
    tls: Option<&BenchTls>,
) -> BenchResult<ServerChild> {
    match tls {
        None => start_server(name, dir, None),
        Some(t) => {
            let config = t.server_config(name)?;
            start_server(name, dir, Some(&config.0))
        }
    }
}

/// Starts `brook serve` (this executable) on a fresh data directory: `dir`, or
/// `./brook-bench-<name>-<pid>` removed afterwards; with `config` when given.
pub fn start_server(
    name: &str,
    dir: Option<PathBuf>,
    config: Option<&std::path::Path>,
) -> BenchResult<ServerChild> {
    let (dir, remove_dir) = match dir {
        Some(d) => (d, false),
        None => (
            PathBuf::from(format!("./brook-bench-{name}-{}", std::process::id())),
            true,
        ),
    };
    if dir.exists() && config.is_none() {
        return Err(format!("{} already exists; pick a new --dir", dir.display()).into());
    }
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve");
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd
        .args([
            "--native",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--mqtt",
            "127.0.0.1:0",
            "--kafka",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&dir)
        .env("BROOK_LOG", "warn,brook::serve=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    // Read on a thread of its own (which drains the log for the server's whole life), so the
    // wait for the listening line has a deadline.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                // Nobody listens any more: keep draining so the server never blocks on stderr.
                continue;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let field = |line: &str, name: &str| {
        line.split(name)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
    };
    let (addr, mqtt_addr, http_addr, line) = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err("brook serve exited before listening".into());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("brook serve did not report its listeners within 60 s".into());
            }
        };
        // The line names every listener; the benches use these.
        if let (Some(n), Some(m), Some(h)) = (
            field(&line, "native="),
            field(&line, "mqtt="),
            field(&line, "http="),
        ) {
            break (n, m, h, line);
        }
    };
    let tls_addr = |name: &str| field(&line, name).filter(|a| a != "-");
    let (native_tls_addr, mqtt_tls_addr) = (tls_addr("native_tls="), tls_addr("mqtt_tls="));
    Ok(ServerChild {
        child,
        addr,
        mqtt_addr,
        http_addr,
        native_tls_addr,
        mqtt_tls_addr,
        dir,
        remove_dir,
    })
}

/// (VmRSS, VmHWM) of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) a process has used, in seconds (from `/proc/PID/stat`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / if hz > 0 { hz as f64 } else { 100.0 })
}

/// Fills `buf` with xorshift64 output: cheap, incompressible-looking record values.
pub fn fill_random(seed: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let bytes = seed.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}
