//! The `brook` command line: parses arguments, loads the config, calls into the library.
//!
//! | module | job |
//! |---|---|
//! | `commands` | the client commands: topics, produce, consume, groups, mirror status, passwd |
//! | `bench` | `brook bench ...` (feature `bench`): throughput, latency, write amplification |

#[cfg(feature = "bench")]
mod bench;
mod commands;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand};

use brook::config::{Config, DEFAULT_CONFIG};
use brook::log::Durability;
use brook::units::HumanDuration;

/// `brook --version`: the release, the git commit, the target and the build profile.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BROOK_GIT_COMMIT"),
    ", ",
    env!("BROOK_TARGET"),
    ", ",
    env!("BROOK_PROFILE"),
    " profile)"
);

#[derive(Parser)]
#[command(
    name = "brook",
    version = VERSION,
    about = "A streaming broker for edge and IoT devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Brook: open (and recover) the log and metadata and keep them tidy until SIGINT/SIGTERM.
    Serve {
        /// Config file (TOML); without one, the embedded default (`brook config default`).
        #[arg(long, env = "BROOK_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory; overrides `data_dir` of the config.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Native protocol listener address; overrides `listeners.native`.
        #[arg(long, value_name = "ADDR")]
        native: Option<String>,
        /// MQTT listener; overrides `listeners.mqtt`.
        #[arg(long, value_name = "ADDR")]
        mqtt: Option<String>,
        /// Kafka API listener; overrides `listeners.kafka`.
        #[arg(long, value_name = "ADDR")]
        kafka: Option<String>,
        /// HTTP listener (metrics, health, API); overrides `listeners.http`.
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
    },
    /// List, create, describe or delete topics.
    Topics {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Append one record per line of standard input to a topic.
    Produce {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        topic: String,
        /// Key of every record (its partition follows from it, as in Kafka).
        #[arg(long)]
        key: Option<String>,
        /// Partition to write to (default: by key, else spread).
        #[arg(long)]
        partition: Option<u32>,
        /// What an acknowledgement means: none, written (in the OS) or durable (fsynced).
        #[arg(long, default_value = "durable")]
        durability: Durability,
        /// Report how many records were acknowledged.
        #[arg(long)]
        verbose: bool,
    },
    /// Print records of a topic, one per line.
    Consume {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        topic: String,
        /// Only this partition (default: all, or those the group assigns).
        #[arg(long, conflicts_with = "group")]
        partition: Option<u32>,
        /// Where to start without a committed offset: earliest, latest or an offset.
        #[arg(long, default_value = "earliest")]
        from: String,
        /// Consume as a member of this group, committing what was printed.
        #[arg(long)]
        group: Option<String>,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<u64>,
        /// Keep waiting for new records at the end of the log.
        #[arg(long)]
        follow: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: crate::commands::Format,
    },
    /// List or describe consumer groups.
    Groups {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: GroupsCommand,
    },
    /// Upstream mirrors: state, backlog, errors (read from the HTTP listener).
    Mirror {
        #[command(subcommand)]
        command: MirrorCommand,
    },
    /// Add or update a user in a users file (auth.users_file), like mosquitto_passwd: the
    /// password is read from the terminal (twice), or from the first line of standard input.
    Passwd {
        /// The users file (created when missing, written with mode 0600).
        file: PathBuf,
        user: String,
        /// Remove the user instead.
        #[arg(short = 'D', long)]
        delete: bool,
        /// PBKDF2-SHA512 rounds (Mosquitto writes 101; more is slower to guess and to check).
        #[arg(long, default_value_t = brook::auth::password::DEFAULT_ITERATIONS,
              value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
        iterations: u32,
    },
    /// Verify every segment of a data directory (exit 0 clean, 1 repairable, 2 corrupt, 8 not
    /// checked: missing, or in use by a running Brook).
    Check {
        /// The data directory (holding topics/) or a topics directory.
        dir: PathBuf,
        /// Cut torn tails of active segments and rewrite missing or stale indexes.
        #[arg(long)]
        repair: bool,
        /// With --repair: record every damaged range as dropped, so it is no longer reported
        /// (its offsets stay lost; nothing intact is touched).
        #[arg(long, requires = "repair")]
        drop_corrupt: bool,
    },
    /// Measure Brook's speed and footprint (not in builds without the `bench` feature).
    #[cfg(feature = "bench")]
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print or check configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// Where the broker is, and who to log in as. Global: accepted after the subcommand too
/// (`brook topics create t --broker HOST:PORT`).
#[derive(Args)]
struct Conn {
    /// Address of a Brook native listener.
    #[arg(
        long,
        global = true,
        env = "BROOK_BROKER",
        default_value = "127.0.0.1:7420"
    )]
    broker: String,
    /// Log in as this user (a server with a users file requires a login).
    #[arg(long, global = true, env = "BROOK_USER")]
    user: Option<String>,
    /// File whose first line is the password; without it, the BROOK_PASSWORD variable.
    #[arg(long, global = true, env = "BROOK_PASSWORD_FILE", value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Connect over TLS, trusting the CAs in this PEM file (the server's native_tls listener).
    #[arg(long, global = true, env = "BROOK_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; with --tls-key.
    #[arg(
        long,
        global = true,
        env = "BROOK_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    #[arg(
        long,
        global = true,
        env = "BROOK_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
}

impl Conn {
    /// Connects and logs in when `--user` is given.
    async fn connect(&self) -> crate::commands::Result<std::sync::Arc<brook::client::Client>> {
        let login = match &self.user {
            None => None,
            Some(user) => Some((
                user.clone(),
                crate::commands::read_secret(self.password_file.as_deref(), "BROOK_PASSWORD")?,
            )),
        };
        let tls = match &self.tls_ca {
            None if self.tls_cert.is_some() => {
                return Err(crate::commands::Usage(
                    "--tls-cert needs --tls-ca (the CA that signed the server)".into(),
                )
                .into());
            }
            None => None,
            Some(ca) => Some(brook::client::ClientTls::new(
                ca,
                self.tls_cert.as_deref().zip(self.tls_key.as_deref()),
            )?),
        };
        crate::commands::connect(&self.broker, login, tls.as_ref()).await
    }
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// One name per line (or a JSON array with --json).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create a topic; unset options take the server's topic_defaults.
    Create {
        name: String,
        #[arg(long)]
        partitions: Option<u32>,
        /// Delete data older than this (e.g. "7d", "none").
        #[arg(long)]
        retention: Option<HumanDuration>,
        /// Bound on each partition's bytes (e.g. "1GiB", "none").
        #[arg(long)]
        retention_size: Option<brook::units::ByteSize>,
        /// Segment size (e.g. "8MiB").
        #[arg(long)]
        segment_size: Option<brook::units::ByteSize>,
        /// At a limit: drop_oldest or reject.
        #[arg(long)]
        on_full: Option<String>,
        /// What happens to old records: delete (by retention), compact (keep the newest
        /// record of each key) or compact_delete (both).
        #[arg(long, value_parser = ["delete", "compact", "compact_delete"])]
        cleanup: Option<String>,
        /// On a compacted topic, how long tombstones (null values) stay (e.g. "1d").
        #[arg(long)]
        delete_retention: Option<HumanDuration>,
    },
    /// Partitions, offsets and sizes of a topic.
    Describe {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic and its data.
    Delete { name: String },
}

#[derive(Subcommand)]
enum MirrorCommand {
    /// Per mirror, topic and partition: state, backlog, records sent and dropped, last error.
    Status {
        /// The HTTP listener of the `brook serve` to ask.
        #[arg(long, env = "BROOK_HTTP", default_value = "127.0.0.1:7421")]
        http: String,
        /// File holding the API token (the server's auth.http_token_file).
        #[arg(long, env = "BROOK_HTTP_TOKEN_FILE", value_name = "FILE")]
        token_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GroupsCommand {
    /// One group per line (or a JSON array with --json).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Members, assignments, committed offsets and lag.
    Describe {
        group: String,
        #[arg(long)]
        json: bool,
    },
}

#[cfg(feature = "bench")]
#[derive(Subcommand)]
enum BenchCommand {
    /// Append, read back and reopen the log on a real directory.
    Storage(bench::storage::StorageBench),
    /// Produce and consume over loopback against a real `brook serve`.
    Native(bench::native::NativeBench),
    /// MQTT publishers and subscribers against `brook serve` or any MQTT broker.
    Mqtt(bench::mqtt::MqttBench),
    /// Many MQTT devices at a steady rate, each receiving its own QoS 1 messages back.
    MqttFleet(bench::mqtt::MqttFleet),
    /// How fast a mirror drains a backlog upstream (and, for Kafka, a plain producer beside it).
    Mirror(bench::mirror::MirrorBench),
    /// What one login's password check costs (users-file hashes, one core).
    Password {
        /// PBKDF2 rounds to measure.
        #[arg(long, default_value_t = brook::auth::password::DEFAULT_ITERATIONS)]
        iterations: u32,
        /// Checks to time.
        #[arg(long, default_value_t = 50)]
        checks: u32,
        /// Print the figures as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the commented default configuration.
    Default,
    /// Validate a configuration file without starting (like nginx -t): its settings, and the
    /// users, ACL, token, certificate and key files it names, read as `serve` reads them.
    Check { file: PathBuf },
}

/// BROOK_LOG as a filter: comma-separated levels (`debug`) and `target=level` directives. A
/// bare word must be a level: `Targets` would take a typo (`debg`) as a target name and turn
/// every other log line off. Without a bare level, the rest logs at info.
fn log_filter(v: &str) -> Result<tracing_subscriber::filter::Targets, String> {
    use tracing_subscriber::filter::LevelFilter;
    for directive in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if level.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "{level:?} is not a level (trace, debug, info, warn, error, off)"
            ));
        }
    }
    let targets: tracing_subscriber::filter::Targets = v.parse().map_err(|e| format!("{e}"))?;
    Ok(match targets.default_level() {
        Some(_) => targets,
        None => targets.with_default(tracing::Level::INFO),
    })
}

fn main() -> ExitCode {
    // BROOK_LOG: a level ("debug") or directives ("warn,brook::mirror=debug"); default info.
    // `Targets` rather than EnvFilter: no regex engine in the binary (about 300 KB on ARM).
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let default = Targets::new().with_default(tracing::Level::INFO);
    let filter = match std::env::var("BROOK_LOG") {
        Ok(v) => log_filter(&v).unwrap_or_else(|why| {
            eprintln!("brook: BROOK_LOG={v:?} is not a log filter ({why}); using info");
            default
        }),
        Err(_) => default,
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(
                    cfg!(feature = "color") && std::io::IsTerminal::is_terminal(&std::io::stderr()),
                ),
        )
        .with(filter)
        .init();
    let cli = Cli::parse_from(hoist_connection_flags(std::env::args_os().collect()));
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("brook: {e}");
            ExitCode::from(exit_code(e.as_ref()))
        }
    }
}

/// Exit status of a failed command: 2 a usage error (as clap's own), 3 the server refused (an
/// error answer: not authorized, no such topic, ...), 1 anything else (cannot connect, I/O).
fn exit_code(e: &(dyn std::error::Error + 'static)) -> u8 {
    use brook::client::ClientError;
    if e.downcast_ref::<crate::commands::Usage>().is_some() {
        2
    } else if matches!(
        e.downcast_ref::<ClientError>(),
        Some(ClientError::Server { .. } | ClientError::Http { .. })
    ) {
        3
    } else {
        1
    }
}

/// Flags of [`Conn`] take effect wherever they are on the line: given before the command name
/// (`brook --broker HOST:PORT topics list`) they are moved after it, where clap looks for them.
fn hoist_connection_flags(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const FLAGS: [&str; 6] = [
        "--broker",
        "--user",
        "--password-file",
        "--tls-ca",
        "--tls-cert",
        "--tls-key",
    ];
    let mut out = Vec::with_capacity(args.len());
    let mut hoisted = Vec::new();
    let mut rest = args.into_iter();
    out.extend(rest.next());
    while let Some(a) = rest.next() {
        let text = a.to_string_lossy();
        let name = text.split('=').next().unwrap_or("");
        if FLAGS.contains(&name) {
            let has_value = text.contains('=');
            hoisted.push(a);
            if !has_value {
                hoisted.extend(rest.next());
            }
        } else if text.starts_with('-') {
            out.push(a);
        } else {
            // The command name: the hoisted flags follow it.
            out.push(a);
            out.append(&mut hoisted);
            out.extend(rest);
            return out;
        }
    }
    out.append(&mut hoisted);
    out
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Serve {
            config,
            data_dir,
            native,
            http,
            mqtt,
            kafka,
        } => {
            let mut cfg = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Some(a) = native {
                cfg.listeners.native = a;
            }
            if let Some(a) = mqtt {
                cfg.listeners.mqtt = a;
            }
            if let Some(a) = kafka {
                cfg.listeners.kafka = a;
            }
            if let Some(a) = http {
                cfg.listeners.http = a;
            }
            cfg.validate()
                .map_err(|m| format!("invalid settings: {m}"))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cfg.runtime.workers())
                // Blocking-pool threads started under load leave 1.5 s after it rather than
                // tokio's 10 s, giving back their stacks and wake-ups sooner. (None is kept at
                // idle: housekeeping runs on the main thread.)
                .thread_keep_alive(std::time::Duration::from_millis(1500))
                .enable_all()
                .build()?;
            // Handlers are installed before anything else, so no early signal is missed.
            let shutdown = {
                let _runtime = runtime.enter();
                shutdown_signal()?
            };
            // The main thread runs the housekeeping rounds; the workers run the rest.
            brook::serve::run(&runtime, cfg, shutdown)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics { conn, command } => client_command(async move {
            let client = conn.connect().await?;
            match command {
                TopicsCommand::List { json } => crate::commands::topics_list(&client, json).await,
                TopicsCommand::Create {
                    name,
                    partitions,
                    retention,
                    retention_size,
                    segment_size,
                    on_full,
                    cleanup,
                    delete_retention,
                } => {
                    let reject_when_full = match on_full.as_deref() {
                        None => None,
                        Some("reject") => Some(true),
                        Some("drop_oldest") => Some(false),
                        Some(o) => {
                            return Err(crate::commands::Usage(format!(
                                "--on-full {o:?}: use drop_oldest or reject"
                            ))
                            .into());
                        }
                    };
                    let settings = brook::proto::TopicSettings {
                        partitions,
                        retention_ms: retention.map(|r| r.as_millis()),
                        retention_bytes: retention_size.map(|b| b.bytes()),
                        segment_bytes: segment_size.map(|b| b.bytes()),
                        reject_when_full,
                    };
                    let options = brook::proto::TopicOptions {
                        cleanup: cleanup.as_deref().map(|c| match c {
                            "compact" => brook::proto::CleanupPolicy::Compact,
                            "compact_delete" => brook::proto::CleanupPolicy::CompactDelete,
                            _ => brook::proto::CleanupPolicy::Delete,
                        }),
                        delete_retention_ms: delete_retention.map(|d| d.as_millis()),
                    };
                    crate::commands::topics_create(&client, &name, settings, options).await
                }
                TopicsCommand::Describe { name, json } => {
                    crate::commands::topics_describe(&client, &name, json).await
                }
                TopicsCommand::Delete { name } => {
                    crate::commands::topics_delete(&client, &name).await
                }
            }
        }),
        Command::Produce {
            conn,
            topic,
            key,
            partition,
            durability,
            verbose,
        } => client_command(async move {
            let client = conn.connect().await?;
            // A file on stdin (`< big.txt`) has a size to show progress against.
            let size = std::os::fd::AsFd::as_fd(&std::io::stdin())
                .try_clone_to_owned()
                .ok()
                .and_then(|fd| std::fs::File::from(fd).metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len());
            let bar = crate::progress::bytes("producing", size);
            let stdin = std::io::BufReader::new(std::io::stdin());
            let options = crate::commands::ProduceOptions {
                topic: &topic,
                key: key.as_deref(),
                partition,
                durability,
                verbose,
            };
            let sent = crate::commands::produce(client, options, stdin, &bar).await;
            bar.finish_and_clear();
            sent.map(drop)
        }),
        Command::Consume {
            conn,
            topic,
            partition,
            from,
            group,
            count,
            follow,
            format,
        } => client_command(async move {
            let from = match from.as_str() {
                "earliest" => brook::client::StartFrom::Earliest,
                "latest" => brook::client::StartFrom::Latest,
                n => brook::client::StartFrom::Offset(n.parse().map_err(|_| {
                    crate::commands::Usage(format!(
                        "--from {n:?}: use earliest, latest or an offset"
                    ))
                })?),
            };
            let client = conn.connect().await?;
            // Unbuffered: `consume` writes a batch at once and must learn which lines the
            // reader took when it closes the pipe.
            let mut out = std::fs::File::from(
                std::os::fd::AsFd::as_fd(&std::io::stdout()).try_clone_to_owned()?,
            );
            // SIGINT or SIGTERM: stop soon (within a piece of output), commit what was
            // printed, leave the group; a second one ends at once.
            stop_on_signals();
            crate::commands::consume(
                client,
                crate::commands::ConsumeOptions {
                    topic: &topic,
                    partition,
                    from,
                    group: group.as_deref(),
                    count,
                    follow,
                    format,
                },
                &mut out,
                &STOP,
            )
            .await
            .map(drop)
        }),
        Command::Groups { conn, command } => client_command(async move {
            let client = conn.connect().await?;
            match command {
                GroupsCommand::List { json } => crate::commands::groups_list(&client, json).await,
                GroupsCommand::Describe { group, json } => {
                    crate::commands::groups_describe(&client, &group, json).await
                }
            }
        }),
        Command::Mirror {
            command:
                MirrorCommand::Status {
                    http,
                    token_file,
                    json,
                },
        } => client_command(async move {
            let token = match token_file {
                Some(f) => Some(crate::commands::read_secret(Some(&f), "")?),
                None => None,
            };
            crate::commands::mirror_status(&http, token.as_deref(), json).await
        }),
        Command::Passwd {
            file,
            user,
            delete,
            iterations,
        } => {
            crate::commands::passwd(&file, &user, delete, iterations)
                .map_err(|e| -> Box<dyn std::error::Error> { e.to_string().into() })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            dir,
            repair,
            drop_corrupt,
        } => {
            let bar = crate::progress::bytes(
                "checking",
                crate::progress::wanted().then(|| brook::check::segment_bytes(&dir)),
            );
            let checked = brook::check::check_with_progress(
                &dir,
                match (repair, drop_corrupt) {
                    (_, true) => brook::check::Repair::DropCorrupt,
                    (true, false) => brook::check::Repair::Safe,
                    (false, false) => brook::check::Repair::No,
                },
                &|n| bar.inc(n),
            );
            bar.finish_and_clear();
            match checked {
                Ok(report) => {
                    print!("{}", report.render());
                    Ok(ExitCode::from(report.exit_code()))
                }
                Err(e) => {
                    eprintln!("brook check: {e}");
                    Ok(ExitCode::from(8))
                }
            }
        }
        #[cfg(feature = "bench")]
        Command::Bench(cmd) => run_bench(cmd),
        Command::Config(ConfigCommand::Default) => {
            print!("{DEFAULT_CONFIG}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let config = Config::load(&file)?;
            config
                .check_files()
                .map_err(|source| brook::config::ConfigError::Invalid {
                    path: file.clone(),
                    source,
                })?;
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs a `brook bench` command.
#[cfg(feature = "bench")]
fn run_bench(cmd: BenchCommand) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use crate::bench::Report;
    match cmd {
        BenchCommand::Storage(b) => {
            b.run()?.print(b.json)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Password {
            iterations,
            checks,
            json,
        } => {
            crate::bench::password::run(iterations, checks)
                .map_err(|e| -> Box<dyn std::error::Error> { e })?
                .print(json)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Native(b) => {
            block_on(b.run())?.print(b.json)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Mirror(b) => {
            block_on(b.run())?.print(b.json)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Mqtt(b) => {
            block_on(b.run())?.print(b.json)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::MqttFleet(b) => {
            let report = block_on(b.run())?;
            report.print(b.json)?;
            Ok(if report.missing == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Runs a benchmark's future on a multi-threaded runtime.
#[cfg(feature = "bench")]
fn block_on<T>(
    f: impl std::future::Future<Output = crate::bench::BenchResult<T>>,
) -> Result<T, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(f)
        .map_err(|e| -> Box<dyn std::error::Error> { e })
}

/// Installs SIGINT and SIGTERM handlers now and returns a future that completes on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// Set by the first SIGINT or SIGTERM once [`stop_on_signals`] is called.
static STOP: AtomicBool = AtomicBool::new(false);

/// Makes SIGINT and SIGTERM set [`STOP`] (the second one exits, 130). The handler sets the flag
/// itself: a command blocked writing to a slow reader (not in the runtime) still sees it.
fn stop_on_signals() {
    extern "C" fn on_signal(_: libc::c_int) {
        if STOP.swap(true, Ordering::Relaxed) {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(130) };
        }
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only does async-signal-safe things (an atomic swap, _exit);
        // SA_RESTART lets a write in progress go on.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}

/// Runs a client command on a small runtime; errors are printed by `main`.
fn client_command(
    f: impl std::future::Future<Output = crate::commands::Result<()>>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(f)
        .map_err(|e| -> Box<dyn std::error::Error> { e })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::hoist_connection_flags;

    fn hoist(line: &str) -> String {
        let args = line.split(' ').map(std::ffi::OsString::from).collect();
        let out: Vec<String> = hoist_connection_flags(args)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        out.join(" ")
    }

    #[test]
    fn connection_flags_before_the_command_name_move_after_it() {
        assert_eq!(
            hoist("brook --broker h:1 topics list"),
            "brook topics --broker h:1 list"
        );
        assert_eq!(
            hoist("brook --broker=h:1 --user u topics create t"),
            "brook topics --broker=h:1 --user u create t"
        );
        assert_eq!(
            hoist("brook topics list --broker h:1"),
            "brook topics list --broker h:1"
        );
        // Other flags stay where they are; serve does not take them (clap says so).
        assert_eq!(hoist("brook --version"), "brook --version");
        assert_eq!(
            hoist("brook --tls-ca ca.pem serve"),
            "brook serve --tls-ca ca.pem"
        );
    }
}
