//! storage-compare: fjall against redb on Murmur's per-topic history pattern (issue 17).
//!
//! Every event of every topic lives in one ordered key space, keyed by topic and big-endian
//! sequence number. The benchmark measures appends (round-robin over the topics, in batches,
//! for each `fsync` mode), startup (open and find every topic's last position), reading a
//! page of one topic cold and warm, and trimming by count and by age with the space it gives
//! back. Every loop is bounded in count and time; the store lives in a temporary directory
//! that is removed at the end.

mod fjall_store;
mod redb_store;
mod report;
mod store;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;

use crate::fjall_store::{FjallStore, TrimRules};
use crate::redb_store::RedbStore;
use crate::report::{AppendRow, HistoryRow, Report};
use crate::store::{Fsync, Store, TrimRange, disk_usage, evict_page_cache, list_files};
use crate::workload::{Generator, Record, topic_name, topic_prefix};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Engine {
    Fjall,
    Redb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    /// Append throughput per fsync mode and batch size.
    Appends,
    /// Load a history, then startup, page reads, trimming and space.
    History,
}

/// Measures fjall and redb on Murmur's per-topic history write pattern.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Small sizes and short cells: the whole run takes well under a minute.
    #[arg(long)]
    quick: bool,
    #[arg(long, value_delimiter = ',', default_value = "fjall,redb")]
    engines: Vec<Engine>,
    #[arg(long, value_delimiter = ',', default_value = "appends,history")]
    phases: Vec<Phase>,
    /// Topics the events are spread over, round-robin.
    #[arg(long, default_value_t = 1000)]
    topics: usize,
    /// Payload bytes per event (pseudo-random, incompressible); 16 bytes of epoch and
    /// timestamp come on top.
    #[arg(long, default_value_t = 128)]
    payload_bytes: usize,
    /// Events per write batch / write transaction in the append phase.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    batch_sizes: Vec<usize>,
    /// fsync modes of the append phase.
    #[arg(long, value_delimiter = ',', default_value = "always,interval,never")]
    modes: Vec<Fsync>,
    /// How often the `interval` mode syncs, in milliseconds.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Time limit of one append cell (engine × mode × batch size), in seconds
    /// [default: 1.2 with --quick, else 6].
    #[arg(long)]
    cell_secs: Option<f64>,
    /// Event limit of one append cell [default: 200000 with --quick, else 2000000].
    #[arg(long)]
    cell_events: Option<u64>,
    /// Events in the history loaded for startup, reads and trimming
    /// [default: 100000 with --quick, else 1000000].
    #[arg(long)]
    history_events: Option<u64>,
    /// Time the history covers: event timestamps are spread evenly over it, in seconds.
    #[arg(long, default_value_t = 600)]
    history_span_secs: u64,
    /// Events kept per topic by the count trim [default: a quarter of each topic's events].
    #[arg(long)]
    keep: Option<u64>,
    /// Events per page read.
    #[arg(long, default_value_t = 1000)]
    page_events: usize,
    /// Topics a page is read from (each once cold, then once warm).
    #[arg(long, default_value_t = 20)]
    page_topics: usize,
    /// Block/page cache of each engine, in MiB (the same for both).
    #[arg(long, default_value_t = 64)]
    cache_mib: u64,
    /// Where the stores go [default: a new directory under /tmp].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Leave the stores on disk at the end.
    #[arg(long)]
    keep_dir: bool,
    /// Print the files of each history store (after loading, compacting and closing).
    #[arg(long)]
    list_files: bool,
    /// Also write the report (markdown) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Settings after the --quick defaults are applied.
struct Settings {
    topics: usize,
    payload_bytes: usize,
    interval: Duration,
    cell_time: Duration,
    cell_events: u64,
    history_events: u64,
    span_ms: i64,
    keep: u64,
    page_events: usize,
    page_topics: usize,
    cache_bytes: u64,
    list_files: bool,
}

/// Hard ceiling on any one loading loop, whatever the flags say.
const LOAD_TIME_LIMIT: Duration = Duration::from_secs(900);
/// Events per batch when loading the history.
const LOAD_BATCH: usize = 256;
/// The epoch every benchmark event carries.
const EPOCH: u64 = 7;
/// Timestamp of the first loaded event (ms since the Unix epoch).
const HISTORY_BASE_TS: i64 = 1_700_000_000_000;

fn main() -> Result<()> {
    let args = Args::parse();
    let quick = args.quick;
    let history_events = args
        .history_events
        .unwrap_or(if quick { 100_000 } else { 1_000_000 });
    anyhow::ensure!(
        args.topics > 0 && args.topics < 1_000_000,
        "--topics out of range"
    );
    anyhow::ensure!(
        history_events >= args.topics as u64,
        "--history-events must give every topic at least one event"
    );
    let per_topic = history_events / args.topics as u64;
    let settings = Settings {
        topics: args.topics,
        payload_bytes: args.payload_bytes,
        interval: Duration::from_millis(args.interval_ms.max(1)),
        cell_time: Duration::from_secs_f64(args.cell_secs.unwrap_or(if quick { 1.2 } else { 6.0 })),
        cell_events: args
            .cell_events
            .unwrap_or(if quick { 200_000 } else { 2_000_000 }),
        history_events,
        span_ms: i64::try_from(args.history_span_secs.saturating_mul(1000))?,
        keep: args.keep.unwrap_or((per_topic / 4).max(1)),
        page_events: args.page_events,
        page_topics: args.page_topics.clamp(1, args.topics),
        cache_bytes: args.cache_mib * 1024 * 1024,
        list_files: args.list_files,
    };
    let root = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("storage-compare-{}", std::process::id())),
    };
    std::fs::create_dir_all(&root).with_context(|| root.display().to_string())?;
    let started = Instant::now();
    let result = run(&args, &settings, &root);
    if !args.keep_dir {
        std::fs::remove_dir_all(&root).with_context(|| root.display().to_string())?;
    }
    let mut report = result?;
    report.total = started.elapsed();
    let text = report.render(&settings_summary(&args, &settings));
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text)?;
    }
    Ok(())
}

fn settings_summary(args: &Args, s: &Settings) -> String {
    format!(
        "topics {}, payload {} B (+16 B epoch/ts, key {} B), batches {:?}, interval {} ms, \
         cell limit {:.1} s or {} events, history {} events ({} per topic) over {} s, \
         keep {} per topic, page {} events × {} topics, cache {} MiB per engine{}",
        s.topics,
        s.payload_bytes,
        topic_prefix(&topic_name(0)).len() + 8,
        args.batch_sizes,
        s.interval.as_millis(),
        s.cell_time.as_secs_f64(),
        s.cell_events,
        s.history_events,
        s.history_events / s.topics as u64,
        s.span_ms / 1000,
        s.keep,
        s.page_events,
        s.page_topics,
        s.cache_bytes / 1024 / 1024,
        if args.quick { " (--quick)" } else { "" },
    )
}

fn open(engine: Engine, dir: &Path, fsync: Fsync, s: &Settings) -> Result<Box<dyn Store>> {
    Ok(match engine {
        Engine::Fjall => Box::new(FjallStore::open(dir, fsync, s.cache_bytes, None)?),
        Engine::Redb => Box::new(RedbStore::open(
            dir,
            fsync,
            usize::try_from(s.cache_bytes)?,
        )?),
    })
}

fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Fjall => "fjall 3.1.13",
        Engine::Redb => "redb 5.0.0",
    }
}

fn run(args: &Args, s: &Settings, root: &Path) -> Result<Report> {
    let mut report = Report::default();
    if args.phases.contains(&Phase::Appends) {
        for &engine in &args.engines {
            for &mode in &args.modes {
                for &batch in &args.batch_sizes {
                    let dir = root.join(format!("append-{engine:?}-{mode:?}-{batch}"));
                    let row = append_cell(engine, mode, batch.max(1), s, &dir)?;
                    eprintln!("{row:?}");
                    report.appends.push(row);
                    std::fs::remove_dir_all(&dir)?;
                }
            }
        }
    }
    if args.phases.contains(&Phase::History) {
        for &engine in &args.engines {
            let dir = root.join(format!("history-{engine:?}"));
            let row = history(engine, s, &dir)?;
            eprintln!("{row:?}");
            report.history.push(row);
            std::fs::remove_dir_all(&dir)?;
        }
        if args.engines.contains(&Engine::Fjall) {
            let dir = root.join("history-fjall-filter");
            let row = history_fjall_filter(s, &dir)?;
            eprintln!("{row:?}");
            report.history.push(row);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    Ok(report)
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

fn record_bytes(batch: &[Record]) -> u64 {
    batch
        .iter()
        .map(|r| (r.key.len() + r.value.len()) as u64)
        .sum()
}

/// Appends round-robin batches until the cell's event or time limit.
fn append_cell(
    engine: Engine,
    mode: Fsync,
    batch_size: usize,
    s: &Settings,
    dir: &Path,
) -> Result<AppendRow> {
    let mut store = open(engine, dir, mode, s)?;
    let mut generator = Generator::new(s.topics, s.payload_bytes, EPOCH);
    let mut batch = Vec::with_capacity(batch_size);
    let mut bytes = 0;
    let mut syncs = 0;
    let start = Instant::now();
    let mut last_sync = start;
    while generator.produced() < s.cell_events && start.elapsed() < s.cell_time {
        generator.fill(&mut batch, batch_size, now_ms());
        store.append(&batch)?;
        bytes += record_bytes(&batch);
        if mode == Fsync::Interval && last_sync.elapsed() >= s.interval {
            store.sync()?;
            syncs += 1;
            last_sync = Instant::now();
        }
    }
    if mode == Fsync::Interval {
        store.sync()?;
        syncs += 1;
    }
    let elapsed = start.elapsed();
    drop(store);
    let (disk, _) = disk_usage(dir)?;
    Ok(AppendRow {
        engine: engine_name(engine),
        mode,
        batch: batch_size,
        events: generator.produced(),
        bytes,
        elapsed,
        syncs,
        disk,
    })
}

/// Loads the history: `history_events` round-robin events, timestamps spread over the span,
/// written in batches without fsync, then synced once.
fn load(store: &mut dyn Store, s: &Settings) -> Result<Duration> {
    let mut generator = Generator::new(s.topics, s.payload_bytes, EPOCH);
    let mut batch = Vec::with_capacity(LOAD_BATCH);
    let start = Instant::now();
    let total = s.history_events;
    while generator.produced() < total {
        anyhow::ensure!(
            start.elapsed() < LOAD_TIME_LIMIT,
            "loading took over {LOAD_TIME_LIMIT:?}"
        );
        let n = usize::try_from((total - generator.produced()).min(LOAD_BATCH as u64))?;
        batch.clear();
        for _ in 0..n {
            let i = i64::try_from(generator.produced())?;
            let ts = HISTORY_BASE_TS + i * s.span_ms / i64::try_from(total)?;
            batch.push(generator.next_record(ts));
        }
        store.append(&batch)?;
    }
    store.sync()?;
    Ok(start.elapsed())
}

fn prefixes(s: &Settings) -> Vec<Vec<u8>> {
    (0..s.topics)
        .map(|t| topic_prefix(&topic_name(t)))
        .collect()
}

/// The last sequence number of topic `t` after the load.
fn loaded_last_seq(s: &Settings, t: usize) -> u64 {
    let topics = s.topics as u64;
    s.history_events / topics + u64::from((t as u64) < s.history_events % topics)
}

/// The timestamp before which the age trim drops events: the oldest seven eighths of the span.
fn age_cutoff(s: &Settings) -> i64 {
    HISTORY_BASE_TS + s.span_ms * 7 / 8
}

/// Reads a page from sequence 1 of each of `topics`, checking its length: the time of each.
fn pages(store: &dyn Store, s: &Settings, topics: &[usize]) -> Result<Vec<Duration>> {
    let all = prefixes(s);
    let mut times = Vec::with_capacity(topics.len());
    for &t in topics {
        let start = Instant::now();
        let (events, _) = store.read_page(&all[t], 1, s.page_events)?;
        times.push(start.elapsed());
        let expected = usize::try_from(loaded_last_seq(s, t))?.min(s.page_events);
        anyhow::ensure!(
            events == expected,
            "page of topic {t}: {events} events, expected {expected}"
        );
    }
    Ok(times)
}

fn startup(
    engine: Engine,
    dir: &Path,
    s: &Settings,
) -> Result<(Box<dyn Store>, Duration, Duration)> {
    let start = Instant::now();
    let store = open(engine, dir, Fsync::Never, s)?;
    let opened = start.elapsed();
    let positions = store.last_positions(s.topics + 1)?;
    let scanned = start.elapsed() - opened;
    anyhow::ensure!(
        positions.len() == s.topics,
        "found {} topics, expected {}",
        positions.len(),
        s.topics
    );
    for position in &positions {
        let t: usize = position
            .topic
            .rsplit('.')
            .next()
            .and_then(|n| n.parse().ok())
            .context("topic name")?;
        anyhow::ensure!(
            position.last_seq == loaded_last_seq(s, t) && position.epoch == EPOCH,
            "wrong position for {position:?}"
        );
    }
    Ok((store, opened, scanned))
}

/// Count trim then age trim by deletes, then the engine's compaction.
fn history(engine: Engine, s: &Settings, dir: &Path) -> Result<HistoryRow> {
    let mut row = HistoryRow::new(engine_name(engine), "delete ranges");
    let mut store = open(engine, dir, Fsync::Never, s)?;
    row.load = load(store.as_mut(), s)?;
    drop(store);
    row.disk_loaded = disk_usage(dir)?.0;
    if s.list_files {
        list_files(dir, "loaded and closed")?;
    }

    // Startup, cold: the store's files evicted from the page cache first.
    evict_page_cache(dir)?;
    let (store, opened, scanned) = startup(engine, dir, s)?;
    row.open_cold = opened;
    row.positions_cold = scanned;
    drop(store);
    let (store, opened, scanned) = startup(engine, dir, s)?;
    row.open_warm = opened;
    row.positions_warm = scanned;
    // Startup after a clean shutdown: flushed before closing, evicted, opened cold.
    let mut store = store;
    store.prepare_close()?;
    drop(store);
    evict_page_cache(dir)?;
    let (store, opened, scanned) = startup(engine, dir, s)?;
    row.open_clean = opened;
    row.positions_clean = scanned;
    drop(store);

    // A page from each of `page_topics` topics: cold (evicted, reopened), then warm.
    evict_page_cache(dir)?;
    let mut store = open(engine, dir, Fsync::Never, s)?;
    let step = s.topics / s.page_topics;
    let read_topics: Vec<usize> = (0..s.page_topics).map(|k| k * step).collect();
    row.page_cold = pages(store.as_ref(), s, &read_topics)?;
    row.page_warm = pages(store.as_ref(), s, &read_topics)?;
    row.page_len = usize::try_from(loaded_last_seq(s, 0))?.min(s.page_events);

    // Count trim: keep the last `keep` events of each topic.
    let all = prefixes(s);
    let ranges: Vec<TrimRange> = (0..s.topics)
        .filter_map(|t| {
            let last = loaded_last_seq(s, t);
            let low = last.saturating_sub(s.keep) + 1;
            (low > 1).then(|| TrimRange {
                prefix: all[t].clone(),
                from: 1,
                to: low,
            })
        })
        .collect();
    let start = Instant::now();
    row.count_trimmed = store.delete(&ranges)?;
    row.count_trim = start.elapsed();

    // Age trim: find each topic's first event not older than the cutoff, delete before it.
    let cutoff = age_cutoff(s);
    let start = Instant::now();
    let mut ranges = Vec::new();
    for (t, prefix) in all.iter().enumerate() {
        let last = loaded_last_seq(s, t);
        let low = last.saturating_sub(s.keep) + 1;
        let scan = usize::try_from(s.keep + 1)?;
        let to = store
            .first_seq_not_older(prefix, cutoff, scan)?
            .unwrap_or(last + 1);
        if to > low {
            ranges.push(TrimRange {
                prefix: prefix.clone(),
                from: low,
                to,
            });
        }
    }
    row.age_trimmed = store.delete(&ranges)?;
    row.age_trim = start.elapsed();
    row.disk_trimmed = disk_usage(dir)?.0;

    compact_and_measure(store.as_mut(), dir, &all[0], &mut row)?;
    close_and_measure(store, dir, s, &mut row)?;
    Ok(row)
}

/// Compacts the store and records the time, the disk after it and what topic 0 kept.
fn compact_and_measure(
    store: &mut dyn Store,
    dir: &Path,
    topic0: &[u8],
    row: &mut HistoryRow,
) -> Result<()> {
    let start = Instant::now();
    store.compact()?;
    row.compact = start.elapsed();
    row.disk_compacted = disk_usage(dir)?.0;
    row.kept_topic0 = store.read_page(topic0, 0, usize::MAX)?.0;
    Ok(())
}

/// Closes the store (dropping it) and records the disk after it, listing the files before
/// and after when asked.
fn close_and_measure<S>(store: S, dir: &Path, s: &Settings, row: &mut HistoryRow) -> Result<()> {
    if s.list_files {
        list_files(dir, "trimmed and compacted")?;
    }
    drop(store);
    row.disk_closed = disk_usage(dir)?.0;
    if s.list_files {
        list_files(dir, "closed")?;
    }
    Ok(())
}

/// fjall with a compaction filter: the trim only moves each topic's low mark and the age
/// cutoff; the forced compaction drops the events (no tombstones).
fn history_fjall_filter(s: &Settings, dir: &Path) -> Result<HistoryRow> {
    let mut row = HistoryRow::new(engine_name(Engine::Fjall), "compaction filter");
    let rules = Arc::new(TrimRules::default());
    let mut store = FjallStore::open(dir, Fsync::Never, s.cache_bytes, Some(rules.clone()))?;
    row.load = load(&mut store, s)?;
    row.disk_loaded = disk_usage(dir)?.0;

    let all = prefixes(s);
    let start = Instant::now();
    for (t, prefix) in all.iter().enumerate() {
        let last = loaded_last_seq(s, t);
        rules.set_low_seq(prefix.clone(), last.saturating_sub(s.keep) + 1);
    }
    rules.set_min_ts(age_cutoff(s));
    row.count_trim = start.elapsed();
    row.disk_trimmed = disk_usage(dir)?.0;

    compact_and_measure(&mut store, dir, &all[0], &mut row)?;
    // What the filter dropped: everything loaded minus what is left.
    let mut left = 0;
    for prefix in &all {
        left += store.read_page(prefix, 0, usize::MAX)?.0 as u64;
    }
    row.count_trimmed = s.history_events - left;
    close_and_measure(store, dir, s, &mut row)?;
    Ok(row)
}
