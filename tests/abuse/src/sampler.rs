//! Once a second, every node's resident memory (`VmRSS` in `/proc/<pid>/status`) and open
//! files (entries of `/proc/<pid>/fd`), each sample tagged with the phase of the load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The cluster is up and the load's setup is done; nothing runs.
    Baseline = 0,
    /// The load runs.
    Load = 1,
    /// The load's clients are gone; the nodes settle.
    After = 2,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Baseline,
            1 => Self::Load,
            _ => Self::After,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Load => "load",
            Self::After => "after",
        }
    }
}

/// One node's reading; `None` once the process is gone (or a zombie).
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub rss_kib: u64,
    pub fds: u64,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub seconds: f64,
    pub phase: Phase,
    pub nodes: Vec<Option<Reading>>,
}

/// The sampling task's shared state: the phase to tag samples with, and the samples.
#[derive(Clone)]
pub struct Sampler {
    phase: Arc<AtomicU8>,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pids: Vec<u32>) -> Self {
        let phase = Arc::new(AtomicU8::new(Phase::Baseline as u8));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let phase = phase.clone();
            let samples = samples.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let nodes = pids.iter().map(|pid| read(*pid)).collect();
                    samples.lock().await.push(Sample {
                        seconds: started.elapsed().as_secs_f64(),
                        phase: Phase::from_u8(phase.load(Ordering::Relaxed)),
                        nodes,
                    });
                }
            })
        };
        Self {
            phase,
            samples,
            task: Arc::new(task),
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Takes one reading of every node right now, tagged with the current phase, so that a
    /// phase never ends without one.
    pub async fn sample_now(&self, pids: &[u32]) {
        let mut samples = self.samples.lock().await;
        let seconds = samples.last().map_or(0.0, |s| s.seconds + 0.01);
        samples.push(Sample {
            seconds,
            phase: Phase::from_u8(self.phase.load(Ordering::Relaxed)),
            nodes: pids.iter().map(|pid| read(*pid)).collect(),
        });
    }

    /// Stops sampling and returns everything sampled.
    pub async fn finish(self) -> Vec<Sample> {
        self.task.abort();
        std::mem::take(&mut *self.samples.lock().await)
    }
}

/// `VmRSS` and the number of open files of `pid`, or `None` if it is not a live process.
pub fn read(pid: u32) -> Option<Reading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut rss_kib = None;
    for line in status.lines() {
        if let Some(state) = line.strip_prefix("State:")
            && state.trim_start().starts_with('Z')
        {
            return None;
        }
        if let Some(value) = line.strip_prefix("VmRSS:") {
            rss_kib = value.trim().trim_end_matches("kB").trim().parse().ok();
        }
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Reading {
        rss_kib: rss_kib?,
        fds,
    })
}

/// What one node's samples say, in KiB and files.
#[derive(Debug, Clone, Default)]
pub struct NodeSummary {
    pub baseline_kib: u64,
    /// Highest during the load and after it.
    pub peak_kib: u64,
    /// The last reading after the load.
    pub after_kib: u64,
    pub fd_peak: u64,
    /// Seconds into the run of the first sample that found the process gone.
    pub gone_at: Option<f64>,
}

impl NodeSummary {
    pub fn growth_kib(&self) -> u64 {
        self.peak_kib.saturating_sub(self.baseline_kib)
    }
}

pub fn summarize(samples: &[Sample], node: usize) -> NodeSummary {
    let mut summary = NodeSummary::default();
    let mut baselines = Vec::new();
    for sample in samples {
        match sample.nodes.get(node).copied().flatten() {
            Some(reading) => {
                match sample.phase {
                    Phase::Baseline => baselines.push(reading.rss_kib),
                    Phase::Load | Phase::After => {
                        summary.peak_kib = summary.peak_kib.max(reading.rss_kib);
                    }
                }
                if sample.phase == Phase::After {
                    summary.after_kib = reading.rss_kib;
                }
                summary.fd_peak = summary.fd_peak.max(reading.fds);
            }
            None => {
                summary.gone_at.get_or_insert(sample.seconds);
            }
        }
    }
    // The last baseline readings: the node as the load found it.
    summary.baseline_kib = baselines.iter().rev().take(2).copied().max().unwrap_or(0);
    summary
}

/// The samples as CSV: seconds, phase, then rss_kib and fds of each node.
pub fn to_csv(samples: &[Sample], names: &[&str]) -> String {
    let mut csv = String::from("seconds,phase");
    for name in names {
        csv.push_str(&format!(",{name}_rss_kib,{name}_fds"));
    }
    csv.push('\n');
    for sample in samples {
        csv.push_str(&format!("{:.1},{}", sample.seconds, sample.phase.name()));
        for reading in &sample.nodes {
            match reading {
                Some(r) => csv.push_str(&format!(",{},{}", r.rss_kib, r.fds)),
                None => csv.push_str(",,"),
            }
        }
        csv.push('\n');
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seconds: f64, phase: Phase, rss_kib: Option<u64>) -> Sample {
        Sample {
            seconds,
            phase,
            nodes: vec![rss_kib.map(|rss_kib| Reading { rss_kib, fds: 10 })],
        }
    }

    #[test]
    fn this_process_can_be_read() {
        let reading = read(std::process::id()).expect("our own /proc entry");
        assert!(reading.rss_kib > 0);
        assert!(reading.fds >= 3);
    }

    #[test]
    fn growth_is_the_peak_during_and_after_over_the_last_baseline() {
        let samples = [
            // A setup that filled memory is part of the baseline, not growth.
            sample(1.0, Phase::Baseline, Some(10_000)),
            sample(2.0, Phase::Baseline, Some(50_000)),
            sample(3.0, Phase::Baseline, Some(51_000)),
            sample(4.0, Phase::Load, Some(80_000)),
            sample(5.0, Phase::After, Some(90_000)),
            sample(6.0, Phase::After, Some(70_000)),
        ];
        let summary = summarize(&samples, 0);
        assert_eq!(summary.baseline_kib, 51_000);
        assert_eq!(summary.peak_kib, 90_000);
        assert_eq!(summary.after_kib, 70_000);
        assert_eq!(summary.growth_kib(), 39_000);
        assert_eq!(summary.gone_at, None);
    }

    #[test]
    fn a_node_found_gone_is_marked_at_its_first_missing_sample() {
        let samples = [
            sample(1.0, Phase::Baseline, Some(10_000)),
            sample(2.0, Phase::Load, Some(12_000)),
            sample(3.0, Phase::Load, None),
            sample(4.0, Phase::After, None),
        ];
        let summary = summarize(&samples, 0);
        assert_eq!(summary.gone_at, Some(3.0));
        assert_eq!(summary.peak_kib, 12_000);
    }
}
