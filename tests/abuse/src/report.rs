//! What a load did to the nodes, as a verdict and a markdown table.

use std::fmt::Write as _;

use crate::loads::{Load, Outcome};
use crate::sampler::NodeSummary;

/// One node's row.
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub name: &'static str,
    pub memory: NodeSummary,
    /// WARN and ERROR lines the node logged during the load.
    pub warn_lines: u64,
    /// How the process ended, if it did.
    pub died: Option<String>,
    /// The last lines of its log (shown when it died).
    pub log_tail: String,
    /// Whether a new client was served after the load.
    pub served_after: bool,
}

pub struct LoadReport {
    pub load: Load,
    /// Seconds the load actually ran (0 if it never started).
    pub seconds: f64,
    pub outcome: Outcome,
    pub nodes: Vec<NodeRow>,
    pub rss_bound_mib: Option<u64>,
    pub failures: Vec<String>,
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl LoadReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn verdict(&self) -> &'static str {
        if self.passed() { "PASS" } else { "FAIL" }
    }

    /// The node that grew most, and by how many MiB.
    fn largest_growth(&self) -> (&'static str, f64) {
        self.nodes
            .iter()
            .map(|n| (n.name, mib(n.memory.growth_kib())))
            .fold(("-", 0.0), |best, n| if n.1 > best.1 { n } else { best })
    }

    /// Checks the nodes against the bounds; the load's own failures come first.
    pub fn judge(&mut self, log_lines_per_second: f64, log_lines_once: u64) {
        let mut failures = std::mem::take(&mut self.outcome.failures);
        for node in &self.nodes {
            if let Some(how) = &node.died {
                failures.push(format!(
                    "{} died: {how}; its log ends: `{}`",
                    node.name, node.log_tail
                ));
                continue;
            }
            if !node.served_after {
                failures.push(format!(
                    "{} did not serve a new client after the load",
                    node.name
                ));
            }
            let growth = mib(node.memory.growth_kib());
            if let Some(bound) = self.rss_bound_mib
                && growth > bound as f64
            {
                failures.push(format!(
                    "{} grew by {growth:.0} MiB (bound {bound} MiB over its baseline of {:.0} MiB)",
                    node.name,
                    mib(node.memory.baseline_kib)
                ));
            }
            let allowed = (log_lines_per_second * self.seconds) as u64 + log_lines_once;
            if node.warn_lines > allowed {
                failures.push(format!(
                    "{} logged {} WARN/ERROR lines in {:.0} s (bound: {log_lines_per_second} a second plus {log_lines_once})",
                    node.name, node.warn_lines, self.seconds
                ));
            }
        }
        failures.append(&mut self.failures);
        self.failures = failures;
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "### {}. `{}`: {}\n",
            self.load.number(),
            self.load.name(),
            self.verdict()
        );
        let _ = writeln!(md, "{}.\n", self.load.describe());
        for note in &self.outcome.notes {
            let _ = writeln!(md, "- {note}");
        }
        if let Some(topics) = self.outcome.topics_published.filter(|t| *t > 0) {
            let per_topic: Vec<String> = self
                .nodes
                .iter()
                .map(|n| {
                    let kept = n.memory.after_kib.saturating_sub(n.memory.baseline_kib);
                    format!("{} {:.0} B", n.name, kept as f64 * 1024.0 / topics as f64)
                })
                .collect();
            let _ = writeln!(
                md,
                "- memory kept per topic published (RSS after − baseline, over {topics} topics): {}",
                per_topic.join(", ")
            );
        }
        let bound = self
            .rss_bound_mib
            .map_or_else(|| "none (reported only)".to_owned(), |b| format!("{b} MiB"));
        let _ = writeln!(
            md,
            "- ran {:.0} s; RSS bound over baseline: {bound}\n",
            self.seconds
        );
        md.push_str(
            "| node | baseline MiB | peak MiB | growth MiB | after MiB | fd peak | WARN+ERROR lines/s | died | served after |\n\
             |---|---:|---:|---:|---:|---:|---:|---|---|\n",
        );
        for node in &self.nodes {
            let m = &node.memory;
            let rate = if self.seconds > 0.0 {
                node.warn_lines as f64 / self.seconds
            } else {
                0.0
            };
            let after = if node.died.is_some() {
                "–".to_owned()
            } else {
                format!("{:.0}", mib(m.after_kib))
            };
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.0} | {after} | {} | {rate:.2} | {} | {} |",
                node.name,
                mib(m.baseline_kib),
                mib(m.peak_kib),
                mib(m.growth_kib()),
                m.fd_peak,
                node.died.as_deref().unwrap_or("no"),
                if node.served_after { "yes" } else { "no" }
            );
        }
        if self.failures.is_empty() {
            md.push_str("\nVerdict: PASS.\n\n");
        } else {
            md.push_str("\nVerdict: FAIL:\n");
            for failure in &self.failures {
                let _ = writeln!(md, "- {failure}");
            }
            md.push('\n');
        }
        md
    }

    /// The summary table's row.
    pub fn summary_row(&self) -> String {
        let (node, growth) = self.largest_growth();
        let bound = self
            .rss_bound_mib
            .map_or_else(|| "report only".to_owned(), |b| format!("{b} MiB"));
        let fd_peak = self
            .nodes
            .iter()
            .map(|n| n.memory.fd_peak)
            .max()
            .unwrap_or(0);
        let died: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.died.is_some())
            .map(|n| n.name)
            .collect();
        format!(
            "| {} | `{}` | {growth:.0} MiB ({node}) | {bound} | {fd_peak} | {} | **{}** |",
            self.load.number(),
            self.load.name(),
            if died.is_empty() {
                "no".to_owned()
            } else {
                died.join(", ")
            },
            self.verdict()
        )
    }
}

/// The whole report: a header, the summary table, then each load's section.
pub fn render(header: &str, reports: &[LoadReport]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Abuse soak\n\n{header}\n");
    md.push_str(
        "| # | load | largest RSS growth | bound | fd peak | died | verdict |\n\
         |---|---|---:|---|---:|---|---|\n",
    );
    for report in reports {
        let _ = writeln!(md, "{}", report.summary_row());
    }
    md.push('\n');
    for report in reports {
        md.push_str(&report.markdown());
    }
    md
}
