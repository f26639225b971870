//! Latency and throughput of a chaos run, split by phase around its faults, as a markdown
//! table for `report.md` and a self-contained `plot.html` (inline SVG, no script).
//!
//! The phases come from `<out>/timeline.jsonl`: one `{"t": µs since t0, "phase": "fault" |
//! "heal" | "note", "what": text}` per line, on the clock of [`crate::workload::now_us`].
//! A missing file means the run had no fault.
//! - **fault**: from a `fault` mark to the next `heal` (or the end of the run). A `fault` mark
//!   inside a fault window does not start a new one.
//! - **recovery**: from a `heal` for [`RECOVERY_US`] (10 s), cut short by the next `fault`.
//! - **quiet**: everything else: before the first fault, and more than 10 s after a heal.
//!
//! An event's end-to-end latency is the time its delivery was recorded minus the time its
//! publish was sent (each subscription's first copy; the publisher and the subscriber share
//! one clock), and it counts in the phase in which it was **published**. Throughput counts
//! acknowledged publishes and deliveries in the phase in which they **happened**, over the
//! load (from t0 to the last publish or answer to one); deliveries after that (draining) are
//! left out of it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Deserialize;

use crate::history::{Kind, Op};

/// How long after a heal counts as recovery.
pub const RECOVERY_US: u64 = 10_000_000;
/// The width of one step of the plot.
pub const BUCKET_US: u64 = 250_000;
/// Highest latency the histograms hold: an hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {source}")]
    Timeline {
        path: String,
        line: usize,
        source: serde_json::Error,
    },
    #[error(transparent)]
    History(#[from] crate::history::HistoryError),
}

/// One line of `timeline.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Mark {
    pub t: u64,
    pub phase: MarkKind,
    #[serde(default)]
    pub what: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkKind {
    Fault,
    Heal,
    /// Anything else: shown on the timeline, no change of phase.
    #[serde(other)]
    Note,
}

/// Reads `timeline.jsonl`; a missing file is an empty timeline (a run without faults).
pub fn read_timeline(path: &Path) -> Result<Vec<Mark>, ReportError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ReportError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let mut marks: Vec<Mark> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        marks.push(
            serde_json::from_str(line).map_err(|source| ReportError::Timeline {
                path: path.display().to_string(),
                line: i + 1,
                source,
            })?,
        );
    }
    marks.sort_by_key(|m| m.t);
    Ok(marks)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Quiet,
    Fault,
    Recovery,
}

impl Phase {
    pub const ALL: [Self; 3] = [Self::Quiet, Self::Fault, Self::Recovery];

    pub fn name(self) -> &'static str {
        match self {
            Self::Quiet => "quiet",
            Self::Fault => "fault",
            Self::Recovery => "recovery",
        }
    }
}

/// A time span `[start, end)` in µs since t0, of one phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub phase: Phase,
    pub start: u64,
    pub end: u64,
    /// What started it: the fault's or the heal's `what`.
    pub label: String,
}

/// The fault and recovery spans of a timeline, in order; the time between them is quiet.
pub fn spans(marks: &[Mark], end: u64) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    let mut open_fault: Option<(u64, String)> = None;
    for mark in marks {
        match mark.phase {
            MarkKind::Fault if open_fault.is_none() => {
                // A fault cuts short the recovery of the previous one.
                if let Some(last) = spans.last_mut()
                    && last.phase == Phase::Recovery
                    && last.end > mark.t
                {
                    last.end = mark.t;
                }
                open_fault = Some((mark.t, mark.what.clone()));
            }
            MarkKind::Heal => {
                if let Some((start, label)) = open_fault.take() {
                    spans.push(Span {
                        phase: Phase::Fault,
                        start,
                        end: mark.t,
                        label,
                    });
                    spans.push(Span {
                        phase: Phase::Recovery,
                        start: mark.t,
                        end: mark.t + RECOVERY_US,
                        label: mark.what.clone(),
                    });
                }
            }
            MarkKind::Fault | MarkKind::Note => {}
        }
    }
    if let Some((start, label)) = open_fault {
        spans.push(Span {
            phase: Phase::Fault,
            start,
            end: end.max(start),
            label,
        });
    }
    spans.retain(|s| s.end > s.start);
    spans
}

/// The phase at `t`, given the spans of [`spans`].
pub fn phase_at(spans: &[Span], t: u64) -> Phase {
    spans
        .iter()
        .find(|s| s.start <= t && t < s.end)
        .map_or(Phase::Quiet, |s| s.phase)
}

/// How long each phase lasts within `[0, end)`.
pub fn durations(spans: &[Span], end: u64) -> BTreeMap<Phase, u64> {
    let mut out: BTreeMap<Phase, u64> = Phase::ALL.iter().map(|p| (*p, 0)).collect();
    let mut covered = 0;
    for s in spans {
        let length = s.end.min(end).saturating_sub(s.start.min(end));
        *out.entry(s.phase).or_default() += length;
        covered += length;
    }
    *out.entry(Phase::Quiet).or_default() += end.saturating_sub(covered);
    out
}

/// Latency percentiles, in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig).expect("valid histogram bounds")
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        p50: h.value_at_quantile(0.50),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        max: h.max(),
    }
}

/// One phase's numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseStats {
    /// Time spent in the phase during the load, µs.
    pub duration: u64,
    pub acknowledged: u64,
    pub deliveries: u64,
    pub latency: Percentiles,
}

impl PhaseStats {
    pub fn per_second(&self, count: u64) -> f64 {
        if self.duration == 0 {
            return 0.0;
        }
        count as f64 * 1e6 / self.duration as f64
    }
}

/// One plot step of [`BUCKET_US`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bucket {
    pub start: u64,
    pub acknowledged: u64,
    pub deliveries: u64,
    /// Latency of the events published in this step.
    pub latency: Percentiles,
}

/// What the queue-group members saw and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub deliveries: u64,
    pub redelivered: u64,
    pub acks: u64,
    pub acks_refused: u64,
    pub acks_unconfirmed: u64,
}

#[derive(Debug, Default)]
pub struct Analysis {
    pub spans: Vec<Span>,
    pub marks: Vec<Mark>,
    /// The end of the load: the last publish or answer to one.
    pub load_end: u64,
    pub phases: BTreeMap<Phase, PhaseStats>,
    pub buckets: Vec<Bucket>,
    pub queue: QueueStats,
}

pub fn analyse(history: &[Op], marks: &[Mark]) -> Analysis {
    let mut published: HashMap<&str, u64> = HashMap::new();
    let mut load_end = 0;
    for op in history {
        match &op.kind {
            Kind::PublishInvoke { id, .. } => {
                published.insert(id, op.t);
                load_end = load_end.max(op.t);
            }
            Kind::PublishOk { .. } | Kind::PublishFail { .. } => load_end = load_end.max(op.t),
            _ => {}
        }
    }
    let spans = spans(marks, load_end);
    let mut histograms: BTreeMap<Phase, Histogram<u64>> =
        Phase::ALL.iter().map(|p| (*p, histogram(3))).collect();
    let mut phases: BTreeMap<Phase, PhaseStats> = durations(&spans, load_end)
        .into_iter()
        .map(|(phase, duration)| {
            (
                phase,
                PhaseStats {
                    duration,
                    ..PhaseStats::default()
                },
            )
        })
        .collect();
    let last = history.iter().map(|op| op.t).max().unwrap_or(0);
    let bucket_count = usize::try_from(last / BUCKET_US + 1).unwrap_or(0);
    let mut bucket_histograms: Vec<Histogram<u64>> =
        (0..bucket_count).map(|_| histogram(2)).collect();
    let mut buckets: Vec<Bucket> = (0..bucket_count)
        .map(|i| Bucket {
            start: i as u64 * BUCKET_US,
            ..Bucket::default()
        })
        .collect();
    let bucket_of = |t: u64| usize::try_from(t / BUCKET_US).unwrap_or(usize::MAX);

    let members: HashSet<&str> = history
        .iter()
        .filter_map(|op| match &op.kind {
            Kind::Subscribe {
                sub,
                group: Some(_),
                ..
            } => Some(sub.as_str()),
            _ => None,
        })
        .collect();
    let mut queue = QueueStats::default();
    let mut first_copies: HashSet<(&str, &str)> = HashSet::new();
    for op in history {
        match &op.kind {
            Kind::Ack { .. } => queue.acks += 1,
            Kind::AckRefused { .. } => queue.acks_refused += 1,
            Kind::AckUnconfirmed { .. } => queue.acks_unconfirmed += 1,
            Kind::PublishOk { .. } => {
                if op.t <= load_end {
                    phases
                        .entry(phase_at(&spans, op.t))
                        .or_default()
                        .acknowledged += 1;
                }
                if let Some(b) = buckets.get_mut(bucket_of(op.t)) {
                    b.acknowledged += 1;
                }
            }
            Kind::Deliver {
                sub,
                id,
                redelivered,
                ..
            } => {
                if members.contains(sub.as_str()) {
                    queue.deliveries += 1;
                    queue.redelivered += u64::from(*redelivered);
                }
                if op.t <= load_end {
                    phases.entry(phase_at(&spans, op.t)).or_default().deliveries += 1;
                }
                if let Some(b) = buckets.get_mut(bucket_of(op.t)) {
                    b.deliveries += 1;
                }
                let Some(&sent) = published.get(id.as_str()) else {
                    continue;
                };
                if !first_copies.insert((sub, id)) {
                    continue;
                }
                let latency = op.t.saturating_sub(sent).clamp(1, MAX_LATENCY_US);
                if let Some(h) = histograms.get_mut(&phase_at(&spans, sent)) {
                    let _ = h.record(latency);
                }
                if let Some(h) = bucket_histograms.get_mut(bucket_of(sent)) {
                    let _ = h.record(latency);
                }
            }
            _ => {}
        }
    }
    for (phase, h) in &histograms {
        phases.entry(*phase).or_default().latency = percentiles(h);
    }
    for (bucket, h) in buckets.iter_mut().zip(&bucket_histograms) {
        bucket.latency = percentiles(h);
    }
    Analysis {
        spans,
        marks: marks.to_vec(),
        load_end,
        phases,
        buckets,
        queue,
    }
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

/// The `## latency and throughput by phase` section of `report.md`.
pub fn markdown(analysis: &Analysis) -> String {
    let mut text = String::from("## latency and throughput by phase\n\n");
    text.push_str(
        "| phase | time (s) | acknowledged | ack/s | deliveries | deliveries/s | events | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (phase, s) in &analysis.phases {
        if s.duration == 0 && s.latency.count == 0 {
            continue;
        }
        let _ = writeln!(
            text,
            "| {} | {:.1} | {} | {:.1} | {} | {:.1} | {} | {} | {} | {} | {} |",
            phase.name(),
            s.duration as f64 / 1e6,
            s.acknowledged,
            s.per_second(s.acknowledged),
            s.deliveries,
            s.per_second(s.deliveries),
            s.latency.count,
            ms(s.latency.p50),
            ms(s.latency.p90),
            ms(s.latency.p99),
            ms(s.latency.max),
        );
    }
    let _ = writeln!(
        text,
        "\nLatency: delivery minus publish time, each subscription's first copy, in the phase \
         the event was published (`events` is how many). Throughput: acknowledged publishes and \
         deliveries in the phase they happened, over the {:.1} s of load. Fault: from a fault \
         to its heal; recovery: {} s after a heal (cut short by the next fault); quiet: the \
         rest. Plot: [plot.html](plot.html).",
        analysis.load_end as f64 / 1e6,
        RECOVERY_US / 1_000_000
    );
    let q = analysis.queue;
    if q.deliveries > 0 {
        let _ = writeln!(
            text,
            "\nQueue-group members: {} deliveries ({} marked redelivered), {} acks confirmed, \
             {} refused (`unknown_delivery`), {} cut off by the end of a connection.",
            q.deliveries, q.redelivered, q.acks, q.acks_refused, q.acks_unconfirmed
        );
    }
    text
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const WIDTH: f64 = 1100.0;
const PANEL: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;

/// One panel: its top, and how to map a time and a value to pixels.
struct Frame {
    top: f64,
    t_max: f64,
    y_of: Box<dyn Fn(f64) -> f64>,
}

impl Frame {
    fn x(&self, t_us: u64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * (t_us as f64 / self.t_max)
    }
}

fn polyline(svg: &mut String, points: &[(f64, f64)], color: &str, width: f64) {
    if let [(x, y)] = points {
        let _ = writeln!(
            svg,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="1.5" fill="{color}"/>"#
        );
        return;
    }
    if points.is_empty() {
        return;
    }
    let coords: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline fill="none" stroke="{color}" stroke-width="{width}" points="{}"/>"#,
        coords.join(" ")
    );
}

fn bands(svg: &mut String, analysis: &Analysis, frame: &Frame, labels: bool) {
    for span in &analysis.spans {
        let (fill, opacity) = match span.phase {
            Phase::Fault => ("#e74c3c", 0.18),
            Phase::Recovery => ("#f1c40f", 0.15),
            Phase::Quiet => continue,
        };
        let t_max = frame.t_max as u64;
        if span.start >= t_max {
            continue;
        }
        let (x0, x1) = (frame.x(span.start), frame.x(span.end.min(t_max)));
        let _ = writeln!(
            svg,
            r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{PANEL}" fill="{fill}" fill-opacity="{opacity}"/>"#,
            frame.top,
            (x1 - x0).max(1.0)
        );
        if labels {
            let label = match span.phase {
                Phase::Fault => format!("fault: {}", span.label),
                _ => "recovery".to_owned(),
            };
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#333">{}</text>"##,
                x0 + 3.0,
                frame.top
                    + 12.0
                    + if span.phase == Phase::Recovery {
                        14.0
                    } else {
                        0.0
                    },
                escape(&label)
            );
        }
    }
}

fn time_axis(svg: &mut String, frame: &Frame) {
    let bottom = frame.top + PANEL;
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{bottom}" x2="{:.1}" y2="{bottom}" stroke="#000"/>"##,
        WIDTH - RIGHT
    );
    let seconds = frame.t_max / 1e6;
    let step = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0]
        .into_iter()
        .find(|s| seconds / s <= 20.0)
        .unwrap_or(600.0);
    let mut s = 0.0;
    while s <= seconds {
        let x = frame.x((s * 1e6) as u64);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{:.1}" stroke="#000"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{s}s</text>"##,
            bottom + 4.0,
            bottom + 16.0
        );
        s += step;
    }
}

fn value_axis(svg: &mut String, frame: &Frame, ticks: &[(f64, String)], title: &str) {
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{LEFT}" y2="{:.1}" stroke="#000"/>"##,
        frame.top,
        frame.top + PANEL
    );
    for (value, label) in ticks {
        let y = (frame.y_of)(*value);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{label}</text>"##,
            WIDTH - RIGHT,
            LEFT - 5.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="14" y="{:.1}" font-size="12" transform="rotate(-90 14 {:.1})" text-anchor="middle">{title}</text>"#,
        frame.top + PANEL / 2.0,
        frame.top + PANEL / 2.0
    );
}

fn legend(svg: &mut String, x: f64, y: f64, entries: &[(&str, &str)]) {
    let mut x = x;
    for (color, name) in entries {
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}" font-size="12">{name}</text>"#,
            x + 24.0,
            x + 30.0,
            y + 4.0
        );
        x += 50.0 + 7.0 * name.len() as f64;
    }
}

/// `plot.html`: latency (p50, p99, max per step of publish time, log scale) above
/// throughput (acknowledged publishes and deliveries per second), fault windows shaded red
/// and recoveries yellow.
pub fn plot_html(analysis: &Analysis, title: &str) -> String {
    let t_max = analysis
        .buckets
        .last()
        .map_or(BUCKET_US, |b| b.start + BUCKET_US) as f64;
    let per_second = 1e6 / BUCKET_US as f64;
    let mut svg = String::new();

    // Latency, log scale from 0.1 ms to the largest max.
    let top = 40.0;
    let worst = analysis
        .buckets
        .iter()
        .map(|b| b.latency.max)
        .max()
        .unwrap_or(1)
        .max(1_000) as f64;
    let (low, high) = (100f64.log10(), (worst * 1.5).log10());
    let latency = Frame {
        top,
        t_max,
        y_of: Box::new(move |us: f64| {
            top + PANEL - PANEL * ((us.max(100.0).log10() - low) / (high - low))
        }),
    };
    bands(&mut svg, analysis, &latency, true);
    let mut ticks = Vec::new();
    let mut tick = 100.0;
    while tick <= worst * 1.5 {
        let label = if tick < 1e6 {
            format!("{} ms", tick / 1000.0)
        } else {
            format!("{} s", tick / 1e6)
        };
        ticks.push((tick, label));
        tick *= 10.0;
    }
    value_axis(&mut svg, &latency, &ticks, "latency (log)");
    for b in analysis.buckets.iter().filter(|b| b.latency.count > 0) {
        let _ = writeln!(
            svg,
            r##"<circle cx="{:.1}" cy="{:.1}" r="1.8" fill="#8e44ad" fill-opacity="0.6"/>"##,
            latency.x(b.start + BUCKET_US / 2),
            (latency.y_of)(b.latency.max as f64)
        );
    }
    for (color, pick) in [
        (
            "#2980b9",
            (|p: &Percentiles| p.p50) as fn(&Percentiles) -> u64,
        ),
        ("#c0392b", |p: &Percentiles| p.p99),
    ] {
        // One line per run of steps with events: a step without any publish is a hole.
        for run in analysis.buckets.split(|b| b.latency.count == 0) {
            let points: Vec<(f64, f64)> = run
                .iter()
                .map(|b| {
                    (
                        latency.x(b.start + BUCKET_US / 2),
                        (latency.y_of)(pick(&b.latency) as f64),
                    )
                })
                .collect();
            polyline(&mut svg, &points, color, 1.5);
        }
    }
    time_axis(&mut svg, &latency);
    legend(
        &mut svg,
        LEFT,
        top - 14.0,
        &[
            ("#2980b9", "p50 latency"),
            ("#c0392b", "p99 latency"),
            ("#8e44ad", "max (dots)"),
        ],
    );

    // Throughput.
    let top2 = top + PANEL + 70.0;
    let peak = analysis
        .buckets
        .iter()
        .map(|b| b.deliveries.max(b.acknowledged))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * per_second;
    let scale_max = nice_ceiling(peak);
    let throughput = Frame {
        top: top2,
        t_max,
        y_of: Box::new(move |v: f64| top2 + PANEL - PANEL * (v / scale_max)),
    };
    bands(&mut svg, analysis, &throughput, false);
    let ticks: Vec<(f64, String)> = (0..=4)
        .map(|i| {
            let v = scale_max * f64::from(i) / 4.0;
            (v, format!("{v:.0}/s"))
        })
        .collect();
    value_axis(&mut svg, &throughput, &ticks, "per second");
    for (color, pick) in [
        ("#27ae60", (|b: &Bucket| b.deliveries) as fn(&Bucket) -> u64),
        ("#2c3e50", |b: &Bucket| b.acknowledged),
    ] {
        let points: Vec<(f64, f64)> = analysis
            .buckets
            .iter()
            .map(|b| {
                (
                    throughput.x(b.start + BUCKET_US / 2),
                    (throughput.y_of)(pick(b) as f64 * per_second),
                )
            })
            .collect();
        polyline(&mut svg, &points, color, 1.5);
    }
    time_axis(&mut svg, &throughput);
    legend(
        &mut svg,
        LEFT,
        top2 - 14.0,
        &[
            ("#27ae60", "deliveries/s"),
            ("#2c3e50", "acknowledged publishes/s"),
            ("#e74c3c", "fault"),
            ("#f1c40f", "recovery"),
        ],
    );

    let height = top2 + PANEL + 30.0;
    let mut notes = String::new();
    for mark in &analysis.marks {
        let _ = writeln!(
            notes,
            "<li>{:.2} s {:?}: {}</li>",
            mark.t as f64 / 1e6,
            mark.phase,
            escape(&mark.what)
        );
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\n\
         <style>body{{font-family:sans-serif;margin:16px}}</style></head><body>\n\
         <h2>{title}</h2>\n<p>Latency of the events published in each {} ms step (delivery \
         minus publish time; log scale), and throughput per step. Red: fault; yellow: \
         recovery (up to {} s after a heal).</p>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\">\n{svg}</svg>\n<h3>timeline</h3><ul>\n{notes}</ul>\n\
         </body></html>\n",
        BUCKET_US / 1000,
        RECOVERY_US / 1_000_000,
        title = escape(title),
    )
}

/// The smallest of 1, 2, 5 × 10^k that is at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let mut magnitude = 1.0;
    while magnitude * 10.0 < v {
        magnitude *= 10.0;
    }
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|f| f * magnitude)
        .find(|c| *c >= v)
        .unwrap_or(magnitude * 10.0)
}

/// Reads the histories and `<out>/timeline.jsonl`, writes `<out>/plot.html`, and returns the
/// section for `report.md`.
pub fn write(
    out: &Path,
    histories: &[std::path::PathBuf],
    title: &str,
) -> Result<String, ReportError> {
    let mut ops = Vec::new();
    for path in histories {
        let file = std::fs::File::open(path).map_err(|source| ReportError::Io {
            path: path.display().to_string(),
            source,
        })?;
        ops.extend(crate::history::read(std::io::BufReader::new(file))?);
    }
    ops.sort_by_key(|op| op.t);
    let marks = read_timeline(&out.join("timeline.jsonl"))?;
    let analysis = analyse(&ops, &marks);
    let plot = out.join("plot.html");
    std::fs::write(&plot, plot_html(&analysis, title)).map_err(|source| ReportError::Io {
        path: plot.display().to_string(),
        source,
    })?;
    Ok(markdown(&analysis))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(t: u64, phase: MarkKind) -> Mark {
        Mark {
            t,
            phase,
            what: format!("{phase:?} at {t}"),
        }
    }

    const S: u64 = 1_000_000;

    #[test]
    fn phases_split_at_faults_and_heals_with_a_capped_recovery() {
        let marks = [
            mark(2 * S, MarkKind::Note),
            mark(10 * S, MarkKind::Fault),
            mark(12 * S, MarkKind::Fault), // inside the window: no new one
            mark(20 * S, MarkKind::Heal),
            mark(25 * S, MarkKind::Heal), // no open fault: ignored
            mark(40 * S, MarkKind::Fault),
            mark(45 * S, MarkKind::Heal),
            mark(50 * S, MarkKind::Fault), // cuts the recovery short, never healed
        ];
        let spans = spans(&marks, 60 * S);
        let shape: Vec<(Phase, u64, u64)> = spans
            .iter()
            .map(|s| (s.phase, s.start / S, s.end / S))
            .collect();
        assert_eq!(
            shape,
            [
                (Phase::Fault, 10, 20),
                (Phase::Recovery, 20, 30),
                (Phase::Fault, 40, 45),
                (Phase::Recovery, 45, 50),
                (Phase::Fault, 50, 60),
            ]
        );
        assert_eq!(spans[0].label, "Fault at 10000000");
        assert_eq!(phase_at(&spans, 0), Phase::Quiet);
        assert_eq!(phase_at(&spans, 10 * S), Phase::Fault);
        assert_eq!(phase_at(&spans, 20 * S - 1), Phase::Fault);
        assert_eq!(phase_at(&spans, 20 * S), Phase::Recovery);
        assert_eq!(phase_at(&spans, 30 * S), Phase::Quiet, "recovery is capped");
        assert_eq!(phase_at(&spans, 49 * S), Phase::Recovery);
        assert_eq!(phase_at(&spans, 55 * S), Phase::Fault);
        let d = durations(&spans, 60 * S);
        assert_eq!(d[&Phase::Fault], 25 * S);
        assert_eq!(d[&Phase::Recovery], 15 * S);
        assert_eq!(d[&Phase::Quiet], 20 * S);
        // Spans past the end of the load count only up to it.
        let d = durations(&spans, 15 * S);
        assert_eq!((d[&Phase::Quiet], d[&Phase::Fault]), (10 * S, 5 * S));
        // No timeline: everything is quiet.
        assert!(spans_of_nothing().is_empty());
    }

    fn spans_of_nothing() -> Vec<Span> {
        spans(&[], 10 * S)
    }

    fn op(t: u64, client: &str, kind: Kind) -> Op {
        Op {
            t,
            client: client.into(),
            node: "n1".into(),
            kind,
        }
    }

    /// Event `i` is published at `t` and delivered `latency` later, to `subs` subscriptions.
    fn event(ops: &mut Vec<Op>, i: u64, t: u64, latency: u64, subs: &[&str]) {
        let id = format!("p-{i}");
        ops.push(op(
            t,
            "p",
            Kind::PublishInvoke {
                id: id.clone(),
                topic: "chaos.t0".into(),
            },
        ));
        ops.push(op(
            t + 100,
            "p",
            Kind::PublishOk {
                id: id.clone(),
                topic: "chaos.t0".into(),
                epoch: "e".into(),
                seq: i,
            },
        ));
        for sub in subs {
            ops.push(op(
                t + latency,
                sub,
                Kind::Deliver {
                    sub: (*sub).into(),
                    topic: "chaos.t0".into(),
                    epoch: "e".into(),
                    seq: i,
                    id: id.clone(),
                    redelivered: false,
                },
            ));
        }
    }

    #[test]
    fn latency_percentiles_and_throughput_by_phase() {
        let mut ops = Vec::new();
        // Quiet, 0..10 s: 100 events (one every 100 ms), latencies 1..=100 ms, to one sub.
        for i in 0..100 {
            event(&mut ops, i + 1, i * 100_000, (i + 1) * 1000, &["s"]);
        }
        // Fault, 10..12 s: 10 events of 2 s each, to two subs; one copy arrives twice.
        for i in 0..10 {
            event(&mut ops, 200 + i, 10 * S + i * 200_000, 2 * S, &["s", "t"]);
        }
        let repeated = ops.last().cloned().expect("an op");
        ops.push(Op {
            t: repeated.t + 5 * S,
            ..repeated
        });
        // Recovery, 12..14 s: one event, 5 ms.
        event(&mut ops, 300, 13 * S, 5_000, &["s"]);
        ops.sort_by_key(|o| o.t);
        let marks = [mark(10 * S, MarkKind::Fault), mark(12 * S, MarkKind::Heal)];
        let a = analyse(&ops, &marks);
        assert_eq!(a.load_end, 13 * S + 100, "the last publish's ok");

        let quiet = &a.phases[&Phase::Quiet];
        assert_eq!(quiet.latency.count, 100);
        // hdrhistogram with 3 significant digits: within 0.1 %.
        let near = |got: u64, want: u64| got.abs_diff(want) <= want / 500 + 1;
        assert!(near(quiet.latency.p50, 50_000), "{:?}", quiet.latency);
        assert!(near(quiet.latency.p90, 90_000), "{:?}", quiet.latency);
        assert!(near(quiet.latency.p99, 99_000), "{:?}", quiet.latency);
        assert!(near(quiet.latency.max, 100_000), "{:?}", quiet.latency);
        assert_eq!(quiet.acknowledged, 100);
        assert_eq!(quiet.duration, 10 * S);
        assert!((quiet.per_second(quiet.acknowledged) - 10.0).abs() < 1e-9);

        let fault = &a.phases[&Phase::Fault];
        assert_eq!(fault.latency.count, 20, "the repeated copy is not counted");
        assert!(near(fault.latency.p50, 2 * S) && near(fault.latency.max, 2 * S));
        assert_eq!(fault.acknowledged, 10);
        assert_eq!(fault.duration, 2 * S);
        // Deliveries count where they happen: the last quiet event's copy arrives at 10 s,
        // in the fault; the fault's events arrive 2 s later, in recovery.
        assert_eq!(fault.deliveries, 1);
        assert_eq!(quiet.deliveries, 99);

        let recovery = &a.phases[&Phase::Recovery];
        assert_eq!(recovery.latency.count, 1);
        assert!(near(recovery.latency.p99, 5_000));
        assert_eq!(recovery.duration, S + 100, "cut at the end of the load");
        assert_eq!(recovery.acknowledged, 1);
        // Fault events delivered from 12.0 s to 13.0 s (6 × 2 subs); those after the end of
        // the load are draining, not throughput.
        assert_eq!(recovery.deliveries, 12);

        // Buckets: 250 ms steps up to the last op, latency by publish time.
        assert_eq!(a.buckets[0].latency.count, 3);
        assert_eq!(a.buckets[0].acknowledged, 3);
        let fault_bucket = &a.buckets[usize::try_from(10 * S / BUCKET_US).unwrap()];
        assert_eq!(fault_bucket.latency.count, 4, "two events, two subs each");

        let md = markdown(&a);
        assert!(
            md.contains("| quiet | 10.0 | 100 | 10.0 | 99 | 9.9 | 100 | 50.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| fault | 2.0 | 10 | 5.0 | 1 | 0.5 | 20 | 200"),
            "{md}"
        );
        assert!(md.contains("plot.html"));
        let html = plot_html(&a, "kill <test>");
        assert!(html.contains("<svg") && html.contains("fault: Fault at 10000000"));
        assert!(html.contains("kill &lt;test&gt;") && !html.contains("<script"));
    }

    #[test]
    fn a_missing_timeline_is_no_fault_and_a_broken_one_is_an_error() {
        let dir = std::env::temp_dir().join(format!("murmur-chaos-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(read_timeline(&dir.join("absent.jsonl")).unwrap().is_empty());
        let path = dir.join("timeline.jsonl");
        std::fs::write(
            &path,
            "{\"t\":5,\"phase\":\"heal\",\"what\":\"healed\"}\n\n{\"t\":1,\"phase\":\"fault\",\"what\":\"kill n3\"}\n",
        )
        .unwrap();
        let marks = read_timeline(&path).unwrap();
        assert_eq!(marks[0], mark_with(1, MarkKind::Fault, "kill n3"));
        assert_eq!(marks[1].phase, MarkKind::Heal);
        std::fs::write(&path, "{\"t\":1,\"phase\":\"measure\"}\n").unwrap();
        assert_eq!(read_timeline(&path).unwrap()[0].phase, MarkKind::Note);
        std::fs::write(&path, "{\"phase\":\"fault\"}\n").unwrap();
        let error = read_timeline(&path).unwrap_err().to_string();
        assert!(error.contains("line 1"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn mark_with(t: u64, phase: MarkKind, what: &str) -> Mark {
        Mark {
            t,
            phase,
            what: what.into(),
        }
    }

    #[test]
    fn queue_members_are_counted_apart() {
        let mut ops = vec![op(
            0,
            "q",
            Kind::Subscribe {
                sub: "q".into(),
                pattern: "chaos.>".into(),
                group: Some("g".into()),
            },
        )];
        event(&mut ops, 1, 10, 1000, &["q", "plain"]);
        event(&mut ops, 2, 20, 1000, &["q"]);
        if let Some(Op {
            kind: Kind::Deliver { redelivered, .. },
            ..
        }) = ops.last_mut()
        {
            *redelivered = true;
        }
        for kind in [
            Kind::Ack {
                sub: "q".into(),
                id: "p-1".into(),
            },
            Kind::AckRefused {
                sub: "q".into(),
                id: "p-2".into(),
            },
            Kind::AckUnconfirmed {
                sub: "q".into(),
                id: "p-2".into(),
            },
        ] {
            ops.push(op(5000, "q", kind));
        }
        let a = analyse(&ops, &[]);
        assert_eq!(
            a.queue,
            QueueStats {
                deliveries: 2,
                redelivered: 1,
                acks: 1,
                acks_refused: 1,
                acks_unconfirmed: 1,
            }
        );
        let md = markdown(&a);
        assert!(md.contains("2 deliveries (1 marked redelivered), 1 acks confirmed"));
        assert!(
            md.contains("| quiet |") && !md.contains("| fault |"),
            "{md}"
        );
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.5), 1.0);
        assert_eq!(nice_ceiling(130.0), 200.0);
        assert_eq!(nice_ceiling(400.0), 500.0);
        assert_eq!(nice_ceiling(900.0), 1000.0);
    }
}
