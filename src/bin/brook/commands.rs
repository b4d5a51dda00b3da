//! The client-side commands of the CLI (`brook topics`, `produce`, `consume`, `groups`), on top of
//! [`brook::client`]. `main.rs` parses the arguments and calls these.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use brook::client::{Client, Consumer, Producer, StartFrom};
use brook::log::clock::wall_clock_ms;
use brook::log::{Durability, Header, Record};
use brook::proto::{Acks, TopicSettings};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A command line that cannot be carried out as given (a bad value, a missing companion flag):
/// exit status 2, as clap's own usage errors.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Connects to `broker` (over TLS with `tls`) and, given a user and password, logs in.
pub async fn connect(
    broker: &str,
    login: Option<(String, String)>,
    tls: Option<&brook::client::ClientTls>,
) -> Result<Arc<Client>> {
    let id = format!("brook-cli-{}", std::process::id());
    let login = login.as_ref().map(|(u, p)| (u.as_str(), p.as_bytes()));
    Ok(Arc::new(
        Client::connect_secure(broker, &id, tls, login).await?,
    ))
}

/// A secret from the first line of `file`, else from the variable `env`.
pub fn read_secret(file: Option<&std::path::Path>, env: &str) -> Result<String> {
    if let Some(f) = file {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        return Ok(text.lines().next().unwrap_or("").trim_end().to_string());
    }
    if !env.is_empty() {
        if let Ok(v) = std::env::var(env) {
            return Ok(v);
        }
    }
    Err(Usage(format!("no password: give --password-file or set {env}")).into())
}

/// Reads a line from the terminal without echoing it.
fn read_hidden(prompt: &str) -> Result<String> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    // SAFETY: termios is plain data; tcgetattr fills it for fd 0, which is a terminal here.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    let have = unsafe { libc::tcgetattr(0, &mut saved) } == 0;
    if have {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: a termios obtained from tcgetattr, with one flag changed.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if have {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
    }
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// `brook passwd FILE USER`: adds or updates `user` (or removes it with `delete`), writing
/// the file anew (temporary file, fsync, rename) with mode 0600.
pub fn passwd(file: &std::path::Path, user: &str, delete: bool, iterations: u32) -> Result<()> {
    use brook::auth::{PasswordHash, Users, password};
    use std::os::unix::fs::OpenOptionsExt;
    password::validate_name(user)?;
    let mut users = match std::fs::read_to_string(file) {
        Ok(text) => Users::parse(&text).map_err(|e| format!("{}: {e}", file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !delete => Users::default(),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display()).into()),
    };
    if delete {
        if !users.remove(user) {
            return Err(format!("{}: no user {user:?}", file.display()).into());
        }
    } else {
        // SAFETY: isatty only inspects the descriptor.
        let password = if unsafe { libc::isatty(0) } == 1 {
            let first = read_hidden("Password: ")?;
            let again = read_hidden("Reenter password: ")?;
            if first != again {
                return Err("the passwords do not match".into());
            }
            first
        } else {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_string()
        };
        if password.is_empty() {
            return Err("empty password".into());
        }
        if password.len() > password::MAX_PASSWORD {
            return Err(format!("password longer than {} bytes", password::MAX_PASSWORD).into());
        }
        users.set(user, PasswordHash::new(password.as_bytes(), iterations)?);
    }
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        file.file_name().and_then(|n| n.to_str()).unwrap_or("users"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(users.render().as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, file).map_err(|e| format!("cannot replace {}: {e}", file.display()))?;
    Ok(())
}

/// `brook topics list`: one name per line, or a JSON array.
pub async fn topics_list(client: &Client, json: bool) -> Result<()> {
    print_names(&client.list_topics().await?, json)
}

/// One name per line, or a JSON array.
fn print_names(names: &[String], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(names)?);
    } else {
        for n in names {
            println!("{n}");
        }
    }
    Ok(())
}

pub async fn topics_create(
    client: &Client,
    name: &str,
    settings: TopicSettings,
    options: brook::proto::TopicOptions,
) -> Result<()> {
    client.create_topic_with(name, settings, options).await?;
    Ok(())
}

pub async fn topics_delete(client: &Client, name: &str) -> Result<()> {
    client.delete_topic(name).await?;
    Ok(())
}

pub async fn topics_describe(client: &Client, name: &str, json: bool) -> Result<()> {
    let t = client.describe_topic(name).await?;
    if json {
        // The document /api/topics serves for each topic (what the native protocol carries).
        let report = brook::report::TopicReport {
            name: t.name.clone(),
            retention: brook::report::duration(t.retention_ms),
            retention_size: t.retention_bytes,
            segment_size: t.segment_bytes,
            on_full: if t.reject_when_full {
                brook::log::OnFull::Reject
            } else {
                brook::log::OnFull::DropOldest
            },
            cleanup: None,
            delete_retention: None,
            partitions: t
                .partitions
                .iter()
                .map(|p| brook::report::PartitionReport {
                    partition: p.partition,
                    log_start: p.log_start,
                    end_offset: p.end_offset,
                    durable_offset: p.durable_offset,
                    segments: u64::from(p.segments),
                    bytes: p.bytes,
                    refuses_writes: None,
                })
                .collect(),
        };
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "topic {}: {} partitions, retention {} ms, retention bytes {}, segment {} bytes, when full: {}",
        t.name,
        t.partitions.len(),
        t.retention_ms,
        t.retention_bytes,
        t.segment_bytes,
        if t.reject_when_full {
            "reject"
        } else {
            "drop_oldest"
        }
    );
    println!("partition  log_start  end_offset  durable  segments  bytes");
    for p in &t.partitions {
        println!(
            "{:>9}  {:>9}  {:>10}  {:>7}  {:>8}  {}",
            p.partition, p.log_start, p.end_offset, p.durable_offset, p.segments, p.bytes
        );
    }
    Ok(())
}

fn acks(d: Durability) -> Acks {
    match d {
        Durability::None => Acks::None,
        Durability::Written => Acks::Written,
        Durability::Durable => Acks::Durable,
    }
}

/// Options of `brook produce`.
pub struct ProduceOptions<'a> {
    pub topic: &'a str,
    pub key: Option<&'a str>,
    pub partition: Option<u32>,
    pub durability: Durability,
    /// Report how many records were acknowledged.
    pub verbose: bool,
}

/// `brook produce`: one record per line of `input`; returns the records acknowledged;
/// `progress` counts the bytes read. Lines are read on a separate thread, so a partly filled
/// batch still goes out after the linger when the input pauses (an interactive terminal, a
/// slow pipe).
pub async fn produce(
    client: Arc<Client>,
    o: ProduceOptions<'_>,
    input: impl BufRead + Send + 'static,
    progress: &indicatif::ProgressBar,
) -> Result<u64> {
    let ProduceOptions {
        topic,
        key,
        partition,
        durability,
        verbose,
    } = o;
    let mut producer = Producer::new(client, topic, acks(durability)).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<String>>(1024);
    std::thread::spawn(move || {
        for line in input.lines() {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    let mut n = 0u64;
    loop {
        let line = match tokio::time::timeout(producer.linger_time(), rx.recv()).await {
            Ok(Some(line)) => line?,
            Ok(None) => break,
            Err(_) => {
                producer.send_lingering().await?;
                continue;
            }
        };
        progress.inc(line.len() as u64 + 1);
        let record = Record {
            timestamp: wall_clock_ms(),
            key: key.map(|k| k.as_bytes().to_vec()),
            value: Some(line.into_bytes()),
            headers: Vec::new(),
        };
        producer.send(partition, &record).await?;
        n += 1;
    }
    producer.flush().await?;
    if verbose {
        eprintln!("{} records acknowledged", producer.acked);
    }
    if producer.acked != n {
        return Err(format!("{n} records read, {} acknowledged", producer.acked).into());
    }
    Ok(n)
}

/// Output format of `brook consume`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The value, as UTF-8 (invalid bytes replaced).
    Text,
    /// One JSON object per record: topic, partition, offset, timestamp, key, value, headers
    /// (strings as UTF-8, invalid bytes replaced).
    Json,
}

/// Options of `brook consume`.
pub struct ConsumeOptions<'a> {
    pub topic: &'a str,
    pub partition: Option<u32>,
    pub from: StartFrom,
    pub group: Option<&'a str>,
    /// Stop after this many records.
    pub count: Option<u64>,
    /// Keep waiting for new records at the end of the log.
    pub follow: bool,
    pub format: Format,
}

/// `brook consume`: prints records, one per line; with a group, commits what it printed.
///
/// It stops at the end of the log (without `--follow` or `--count`), after `--count` records,
/// when `stop` is set (SIGINT, SIGTERM) or when stdout is closed (EPIPE: `| head`); then it
/// commits what it printed and leaves the group. Each batch is written out at once (so
/// `--follow` shows records as they come); when stdout closes, the lines written whole count as
/// printed, so the next run starts at the first line the pipe did not take.
pub async fn consume(
    client: Arc<Client>,
    o: ConsumeOptions<'_>,
    out: &mut impl Write,
    stop: &AtomicBool,
) -> Result<u64> {
    let mut consumer = match o.group {
        Some(g) => Consumer::in_group(client, o.topic, g, o.from).await?,
        None => Consumer::standalone(client, o.topic, o.partition, o.from).await?,
    };
    let mut printed = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let wait = if o.follow || o.count.is_some() {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(100)
        };
        let batch = consumer.poll(wait).await?;
        if batch.is_empty() {
            // Without --follow or --count, stop once the end of the log is reached.
            if !o.follow && o.count.is_none() {
                break;
            }
            continue;
        }
        // The batch's lines in one buffer, written with as few calls as the pipe takes; where
        // the reader stops taking them, the lines written whole are the ones printed.
        let mut text = Vec::new();
        let mut ends = Vec::with_capacity(batch.len());
        for c in &batch {
            let taken = printed + ends.len() as u64;
            if o.count.is_some_and(|n| taken >= n) || stop.load(Ordering::Relaxed) {
                break;
            }
            match o.format {
                Format::Text => text
                    .extend_from_slice(String::from_utf8_lossy(c.record.value_bytes()).as_bytes()),
                Format::Json => text.extend_from_slice(
                    json_line(&c.topic, c.partition, c.offset, &c.record).as_bytes(),
                ),
            }
            text.push(b'\n');
            ends.push(text.len());
        }
        let (written, closed) = write_lines(out, &text, &ends, stop)?;
        let done = ends.iter().take_while(|end| **end <= written).count();
        // What was not printed is read again next time: back to its first record in each
        // partition.
        let mut rewound = std::collections::BTreeSet::new();
        for c in &batch[done..] {
            if rewound.insert(c.partition) {
                consumer.seek(c.partition, c.offset);
            }
        }
        printed += done as u64;
        if closed || o.count.is_some_and(|n| printed >= n) {
            break;
        }
    }
    // Commit exactly what was printed; `seek` above moved the positions back where needed.
    consumer.commit().await?;
    consumer.close().await?;
    Ok(printed)
}

/// What `brook consume` writes at once at most.
const WRITE_PIECE: usize = 64 * 1024;

/// Writes `text` (lines ending at `ends`) to `out`, in pieces of whole lines of about
/// [`WRITE_PIECE`] so a stop (a signal while a slow reader holds the write) ends it soon,
/// between lines: how many bytes went out, and whether the reader closed it (EPIPE: `| head`,
/// a stop rather than a failure).
fn write_lines(
    out: &mut impl Write,
    text: &[u8],
    ends: &[usize],
    stop: &AtomicBool,
) -> Result<(usize, bool)> {
    let mut written = 0;
    let mut piece_end = 0;
    while written < text.len() {
        if written == piece_end {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            // The last line end within a piece's length, or the next one for a longer line.
            let from = ends.partition_point(|e| *e <= written);
            let within = ends.partition_point(|e| *e <= written + WRITE_PIECE);
            piece_end = ends[within.max(from + 1).min(ends.len()) - 1];
        }
        match out.write(&text[written..piece_end]) {
            Ok(0) => return Ok((written, true)),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok((written, true)),
            Err(e) => return Err(format!("writing to stdout: {e}").into()),
        }
    }
    match out.flush() {
        Ok(()) => Ok((written, false)),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok((written, true)),
        Err(e) => Err(format!("writing to stdout: {e}").into()),
    }
}

fn json_line(topic: &str, partition: u32, offset: u64, r: &Record) -> String {
    let headers: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .map(|Header { name, value }| {
            let value = value.as_ref().map_or(serde_json::Value::Null, |v| {
                serde_json::Value::String(String::from_utf8_lossy(v).into_owned())
            });
            (name.clone(), value)
        })
        .collect();
    serde_json::json!({
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp": r.timestamp,
        "key": r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "value": r.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
        "headers": headers,
    })
    .to_string()
}

pub async fn groups_list(client: &Client, json: bool) -> Result<()> {
    print_names(&client.list_groups().await?, json)
}

pub async fn groups_describe(client: &Client, group: &str, json: bool) -> Result<()> {
    let g = client.describe_group(group).await?;
    if json {
        let report = brook::report::GroupReport::new(
            group,
            g.generation,
            g.members.iter().map(|m| {
                let assignment = m.assignment.as_slice();
                (m.member_id.as_str(), m.client_id.as_str(), assignment)
            }),
            g.offsets.iter().map(|(topic, partition, committed, end)| {
                (topic.as_str(), *partition, *committed, *end)
            }),
        );
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "group {group}: generation {}, {} members",
        g.generation,
        g.members.len()
    );
    for m in &g.members {
        let a: Vec<String> = m
            .assignment
            .iter()
            .map(|(t, p)| format!("{t}/{p}"))
            .collect();
        println!(
            "  member {} ({}): {}",
            m.member_id,
            m.client_id,
            a.join(", ")
        );
    }
    println!("topic  partition  committed  end_offset  lag");
    for (t, p, committed, end) in &g.offsets {
        let lag = end - committed.unwrap_or(0).min(*end);
        let c = committed.map_or("-".to_string(), |c| c.to_string());
        println!("{t}  {p:>9}  {c:>9}  {end:>10}  {lag}");
    }
    Ok(())
}

/// `brook mirror status`: reads `/api/mirrors` from the HTTP listener at `http` and prints one
/// line per mirrored partition (or the JSON as served with `json`).
pub async fn mirror_status(http: &str, token: Option<&str>, json: bool) -> Result<()> {
    let body = brook::client::http_get(http, "/api/mirrors", token).await?;
    let body = body.as_str();
    if json {
        println!("{body}");
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = serde_json::from_str(body)?;
    if rows.is_empty() {
        println!("no mirrors configured");
        return Ok(());
    }
    println!(
        "{:<12} {:<20} {:>4} {:<12} {:>10} {:>10} {:>8} {:>9} {:>8} {:>12} {:>8}  last error",
        "mirror",
        "topic",
        "part",
        "state",
        "backlog",
        "bytes",
        "oldest",
        "rate/s",
        "eta",
        "sent",
        "dropped"
    );
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        let eta = r["eta_secs"].as_f64().map_or("-".to_string(), |e| {
            format!(
                "{}",
                brook::units::HumanDuration(std::time::Duration::from_secs_f64(e.round()))
            )
        });
        println!(
            "{:<12} {:<20} {:>4} {:<12} {:>10} {:>10} {:>8} {:>9.0} {:>8} {:>12} {:>8}  {}",
            s("mirror"),
            s("topic"),
            n("partition"),
            s("state"),
            n("backlog_records"),
            brook::units::ByteSize(n("backlog_bytes")).to_string(),
            brook::units::HumanDuration(std::time::Duration::from_secs(
                n("oldest_unsent_age_ms") / 1000
            ))
            .to_string(),
            r["drain_records_per_sec"].as_f64().unwrap_or(0.0),
            eta,
            n("sent_records"),
            n("dropped_records"),
            s("last_error")
        );
    }
    Ok(())
}
