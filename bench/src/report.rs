//! What every scenario shares: the payload (send time and index inside), latency histograms,
//! and the output (a table row for people, one JSON line for scripts).

use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Payload of warm-up messages, which are not measured.
pub const WARMUP: &[u8] = b"warmup";

/// `t=<ns since start>;i=<index>;` then padding up to `size` bytes.
pub fn payload(start: Instant, index: usize, size: usize) -> Vec<u8> {
    let mut p = format!("t={};i={index};", start.elapsed().as_nanos()).into_bytes();
    p.resize(size.max(p.len()), b'x');
    p
}

/// The send time (ns since start) and index carried by a payload.
pub fn parse_payload(payload: &[u8]) -> Option<(u128, usize)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut fields = text.strip_prefix("t=")?.splitn(3, ';');
    let sent = fields.next()?.parse().ok()?;
    let index = fields.next()?.strip_prefix("i=")?.parse().ok()?;
    Some((sent, index))
}

/// End-to-end latency in microseconds, 1 µs to 60 s.
pub struct Latency(Histogram<u64>);

impl Latency {
    pub fn new() -> Self {
        Self(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"))
    }

    pub fn record(&mut self, sent_ns: u128, received_ns: u128) {
        let us = (received_ns.saturating_sub(sent_ns) / 1000).clamp(1, 60_000_000) as u64;
        self.0.saturating_record(us);
    }

    pub fn merge(&mut self, other: &Self) {
        self.0
            .add(&other.0)
            .expect("histograms with the same bounds merge");
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.0.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn json(&self) -> Value {
        json!({"p50": self.ms(0.5), "p90": self.ms(0.9), "p99": self.ms(0.99),
               "p999": self.ms(0.999), "max": self.0.max() as f64 / 1000.0})
    }

    pub fn row(&self) -> String {
        format!(
            "p50 {:>8.2} ms  p90 {:>8.2}  p99 {:>8.2}  p99.9 {:>8.2}  max {:>8.2}",
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.0.max() as f64 / 1000.0
        )
    }
}

/// Prints the table row, then the JSON line (which gets `label` added, and `at`: when the
/// run ended, in seconds since the Unix epoch, to match it with the servers' logs).
pub fn emit(row: &str, mut line: Value, label: &str) {
    line["label"] = json!(label);
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    line["at"] = json!(at);
    println!("{row}");
    println!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_pads() {
        let start = Instant::now();
        let p = payload(start, 42, 128);
        assert_eq!(p.len(), 128);
        let (sent, index) = parse_payload(&p).expect("a bench payload");
        assert_eq!(index, 42);
        assert!(sent <= start.elapsed().as_nanos());
        assert_eq!(parse_payload(WARMUP), None);
        assert!(payload(start, 7, 1).len() > 1, "never cut below the header");
    }

    #[test]
    fn latency_percentiles_in_ms() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for ms in 1..=100u128 {
            a.record(0, ms * 1_000_000);
        }
        b.record(5_000_000, 4_000_000);
        a.merge(&b);
        let json = a.json();
        assert!((json["p50"].as_f64().unwrap() - 50.0).abs() < 0.1, "{json}");
        assert!(
            (json["max"].as_f64().unwrap() - 100.0).abs() < 0.1,
            "{json}"
        );
    }
}
