//! The results, rendered as markdown tables.

use std::fmt::Write as _;
use std::time::Duration;

use crate::store::Fsync;

#[derive(Debug)]
pub struct AppendRow {
    pub engine: &'static str,
    pub mode: Fsync,
    pub batch: usize,
    pub events: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub syncs: u64,
    /// Bytes on disk after the store was closed.
    pub disk: u64,
}

#[derive(Debug)]
pub struct HistoryRow {
    pub engine: &'static str,
    pub trim_method: &'static str,
    pub load: Duration,
    pub disk_loaded: u64,
    pub open_cold: Duration,
    pub positions_cold: Duration,
    pub open_warm: Duration,
    pub positions_warm: Duration,
    pub open_clean: Duration,
    pub positions_clean: Duration,
    pub page_len: usize,
    pub page_cold: Vec<Duration>,
    pub page_warm: Vec<Duration>,
    pub count_trimmed: u64,
    pub count_trim: Duration,
    pub age_trimmed: u64,
    pub age_trim: Duration,
    pub disk_trimmed: u64,
    pub compact: Duration,
    pub disk_compacted: u64,
    pub disk_closed: u64,
    pub kept_topic0: usize,
}

impl HistoryRow {
    pub fn new(engine: &'static str, trim_method: &'static str) -> Self {
        Self {
            engine,
            trim_method,
            load: Duration::ZERO,
            disk_loaded: 0,
            open_cold: Duration::ZERO,
            positions_cold: Duration::ZERO,
            open_warm: Duration::ZERO,
            positions_warm: Duration::ZERO,
            open_clean: Duration::ZERO,
            positions_clean: Duration::ZERO,
            page_len: 0,
            page_cold: Vec::new(),
            page_warm: Vec::new(),
            count_trimmed: 0,
            count_trim: Duration::ZERO,
            age_trimmed: 0,
            age_trim: Duration::ZERO,
            disk_trimmed: 0,
            compact: Duration::ZERO,
            disk_compacted: 0,
            disk_closed: 0,
            kept_topic0: 0,
        }
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub appends: Vec<AppendRow>,
    pub history: Vec<HistoryRow>,
    pub total: Duration,
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1024.0 / 1024.0)
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

fn max(times: &[Duration]) -> Duration {
    times.iter().copied().max().unwrap_or_default()
}

fn per_event_us(d: Duration, n: u64) -> String {
    if n == 0 {
        "–".to_owned()
    } else {
        format!("{:.2}", d.as_secs_f64() * 1e6 / n as f64)
    }
}

impl Report {
    pub fn render(&self, settings: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Settings: {settings}\n");
        if !self.appends.is_empty() {
            let _ = writeln!(out, "### Appends\n");
            let _ = writeln!(
                out,
                "| engine | fsync | batch | events | seconds | events/s | MiB/s | syncs | disk MiB |"
            );
            let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
            for r in &self.appends {
                let _ = writeln!(
                    out,
                    "| {} | {:?} | {} | {} | {:.2} | {} | {:.1} | {} | {} |",
                    r.engine,
                    r.mode,
                    r.batch,
                    r.events,
                    r.elapsed.as_secs_f64(),
                    human(rate(r.events, r.elapsed)),
                    rate(r.bytes, r.elapsed) / 1024.0 / 1024.0,
                    r.syncs,
                    mib(r.disk),
                );
            }
            out.push('\n');
        }
        let delete_rows: Vec<&HistoryRow> = self
            .history
            .iter()
            .filter(|r| !r.page_cold.is_empty())
            .collect();
        if !delete_rows.is_empty() {
            let _ = writeln!(out, "### Load, startup and page reads\n");
            let _ = writeln!(
                out,
                "| engine | load s | disk MiB | open cold ms | positions cold ms | open warm ms | positions warm ms | open cold after clean close ms | positions ms | page events | page cold median / max ms | page warm median / max ms |"
            );
            let _ = writeln!(
                out,
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for r in &delete_rows {
                let _ = writeln!(
                    out,
                    "| {} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} |",
                    r.engine,
                    r.load.as_secs_f64(),
                    mib(r.disk_loaded),
                    ms(r.open_cold),
                    ms(r.positions_cold),
                    ms(r.open_warm),
                    ms(r.positions_warm),
                    ms(r.open_clean),
                    ms(r.positions_clean),
                    r.page_len,
                    ms(median(&r.page_cold)),
                    ms(max(&r.page_cold)),
                    ms(median(&r.page_warm)),
                    ms(max(&r.page_warm)),
                );
            }
            out.push('\n');
        }
        if !self.history.is_empty() {
            let _ = writeln!(out, "### Trimming and space\n");
            let _ = writeln!(
                out,
                "| engine | method | count-trimmed | ms | µs/event | age-trimmed | ms | µs/event | compact ms | disk MiB loaded → trimmed → compacted → closed | kept in topic 0 |"
            );
            let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|");
            for r in &self.history {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} → {} → {} → {} | {} |",
                    r.engine,
                    r.trim_method,
                    r.count_trimmed,
                    ms(r.count_trim),
                    per_event_us(r.count_trim, r.count_trimmed),
                    r.age_trimmed,
                    ms(r.age_trim),
                    per_event_us(r.age_trim, r.age_trimmed),
                    ms(r.compact),
                    mib(r.disk_loaded),
                    mib(r.disk_trimmed),
                    mib(r.disk_compacted),
                    mib(r.disk_closed),
                    r.kept_topic0,
                );
            }
            out.push('\n');
        }
        let _ = writeln!(out, "Total run time: {:.1} s", self.total.as_secs_f64());
        out
    }
}
