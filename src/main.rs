//! The `brook` command line: parses arguments, loads the config, calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use brook::bench::storage::StorageBench;
use brook::config::{Config, DEFAULT_CONFIG};
use brook::log::Durability;
use brook::units::HumanDuration;

#[derive(Parser)]
#[command(
    name = "brook",
    version,
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
    },
    /// Verify every segment of a data directory (exit 0 clean, 1 repairable, 2 corrupt).
    Check {
        /// The data directory (holding topics/) or a topics directory.
        dir: PathBuf,
        /// Cut torn tails of active segments and rewrite missing or stale indexes.
        #[arg(long)]
        repair: bool,
    },
    /// Measure Brook's speed and footprint.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print or check configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Append, read back and reopen the log on a real directory.
    Storage(StorageArgs),
}

#[derive(Args)]
struct StorageArgs {
    /// Directory for the store (must not exist); default ./brook-bench-<pid>.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Records to append.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Value bytes per record (no key).
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Concurrent producers (producer i appends to partition i % partitions); default: one per
    /// partition.
    #[arg(long)]
    producers: Option<u32>,
    /// What each append waits for: none, written or durable.
    #[arg(long, default_value = "written")]
    durability: Durability,
    /// Records per append call.
    #[arg(long, default_value_t = 100)]
    batch: u32,
    /// Extra delay in every fsync, imitating a slow SD card (e.g. "10ms").
    #[arg(long)]
    fsync_delay: Option<HumanDuration>,
    /// Keep the data directory afterwards.
    #[arg(long)]
    keep: bool,
    /// Also time reopening the store as a kill -9 would leave it.
    #[arg(long)]
    reopen: bool,
    /// With --reopen: drop the page cache first (needs root) to time a cold start.
    #[arg(long, requires = "reopen")]
    cold: bool,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the commented default configuration.
    Default,
    /// Validate a configuration file without starting (like nginx -t).
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BROOK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("brook: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Serve { config, data_dir } => {
            let mut cfg = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                // Handlers are installed before anything else, so no early signal is missed.
                let shutdown = shutdown_signal()?;
                brook::server::serve(cfg, shutdown)
                    .await
                    .map_err(Box::<dyn std::error::Error>::from)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { dir, repair } => {
            let report = brook::check::check(&dir, repair)?;
            print!("{}", report.render());
            Ok(ExitCode::from(report.exit_code() as u8))
        }
        Command::Bench(BenchCommand::Storage(a)) => {
            let bench = StorageBench {
                dir: a.dir,
                records: a.records,
                record_size: a.record_size,
                partitions: a.partitions,
                producers: a.producers.unwrap_or(a.partitions),
                durability: a.durability,
                batch: a.batch,
                fsync_delay: a.fsync_delay.map(|d| d.0).filter(|d| *d > Duration::ZERO),
                keep: a.keep,
                reopen: a.reopen,
                cold: a.cold,
                progress: !a.json,
            };
            let report = bench.run()?;
            if a.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Default) => {
            print!("{DEFAULT_CONFIG}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { file }) => {
            Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
    }
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
