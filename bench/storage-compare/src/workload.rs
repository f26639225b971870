//! The write pattern of Murmur's per-topic history, as bytes: keys, values and topic names.
//!
//! Key: `len(topic) as u8 | topic | seq as u64 big-endian`, so one topic's events are
//! contiguous and in sequence order, and a topic's key prefix is `len | topic`.
//! Value: `epoch as u64 BE | ts_ms as i64 BE | payload` (the payload is pseudo-random bytes:
//! incompressible, the worst case for fjall's LZ4 blocks).

/// Bytes of a value before the payload: epoch and timestamp.
pub const VALUE_HEADER: usize = 16;

/// The name of topic number `index`, e.g. `bench.history.000042`.
pub fn topic_name(index: usize) -> String {
    format!("bench.history.{index:06}")
}

/// The key prefix every event of `topic` starts with.
pub fn topic_prefix(topic: &str) -> Vec<u8> {
    let len = u8::try_from(topic.len()).expect("topic names in this benchmark are short");
    let mut prefix = Vec::with_capacity(1 + topic.len() + 8);
    prefix.push(len);
    prefix.extend_from_slice(topic.as_bytes());
    prefix
}

/// The key of `topic`'s event `seq`.
pub fn event_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The smallest key greater than every key starting with `prefix` (prefixes here never end in
/// 0xff: they end in a topic name's last character).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    let last = end.last_mut().expect("prefix is not empty");
    *last += 1;
    end
}

/// Splits a key into its topic prefix and sequence number.
pub fn split_key(key: &[u8]) -> Option<(&[u8], u64)> {
    let len = usize::from(*key.first()?);
    let prefix = key.get(..1 + len)?;
    let seq = u64::from_be_bytes(key.get(1 + len..)?.try_into().ok()?);
    Some((prefix, seq))
}

/// The topic name in a key prefix.
pub fn prefix_topic(prefix: &[u8]) -> &str {
    std::str::from_utf8(&prefix[1..]).unwrap_or("?")
}

/// The epoch and timestamp of a value.
pub fn value_header(value: &[u8]) -> Option<(u64, i64)> {
    let epoch = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let ts = i64::from_be_bytes(value.get(8..16)?.try_into().ok()?);
    Some((epoch, ts))
}

/// One event ready to be written.
pub struct Record {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Produces events round-robin across topics: event `i` goes to topic `i % topics` with
/// sequence number `i / topics + 1`, as a broker sequencing publishes spread over its topics.
pub struct Generator {
    prefixes: Vec<Vec<u8>>,
    payload_len: usize,
    epoch: u64,
    next: u64,
    rng: u64,
}

impl Generator {
    pub fn new(topics: usize, payload_len: usize, epoch: u64) -> Self {
        Self {
            prefixes: (0..topics).map(|t| topic_prefix(&topic_name(t))).collect(),
            payload_len,
            epoch,
            next: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Events produced so far.
    pub fn produced(&self) -> u64 {
        self.next
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: cheap, and enough to defeat compression.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The next event, stamped `ts_ms`.
    pub fn next_record(&mut self, ts_ms: i64) -> Record {
        let topics = self.prefixes.len() as u64;
        let topic = usize::try_from(self.next % topics).expect("topic index fits");
        let seq = self.next / topics + 1;
        self.next += 1;
        let key = event_key(&self.prefixes[topic], seq);
        let mut value = Vec::with_capacity(VALUE_HEADER + self.payload_len);
        value.extend_from_slice(&self.epoch.to_be_bytes());
        value.extend_from_slice(&ts_ms.to_be_bytes());
        while value.len() < VALUE_HEADER + self.payload_len {
            let word = self.next_random().to_le_bytes();
            let room = VALUE_HEADER + self.payload_len - value.len();
            value.extend_from_slice(&word[..room.min(8)]);
        }
        Record { key, value }
    }

    /// Fills `batch` with the next `n` events, all stamped `ts_ms`.
    pub fn fill(&mut self, batch: &mut Vec<Record>, n: usize, ts_ms: i64) {
        batch.clear();
        for _ in 0..n {
            let record = self.next_record(ts_ms);
            batch.push(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_by_topic_then_seq() {
        let prefix = topic_prefix(&topic_name(7));
        let a = event_key(&prefix, 1);
        let b = event_key(&prefix, 256);
        assert!(a < b);
        assert!(b < prefix_end(&prefix));
        assert_eq!(split_key(&b), Some((&prefix[..], 256)));
        assert_eq!(prefix_topic(&prefix), "bench.history.000007");
    }

    #[test]
    fn generator_goes_round_robin() {
        let mut generator = Generator::new(3, 128, 9);
        let records: Vec<_> = (0..4).map(|_| generator.next_record(5)).collect();
        let seqs: Vec<_> = records
            .iter()
            .map(|r| split_key(&r.key).unwrap().1)
            .collect();
        assert_eq!(seqs, [1, 1, 1, 2]);
        assert_eq!(records[0].value.len(), VALUE_HEADER + 128);
        assert_eq!(value_header(&records[3].value), Some((9, 5)));
    }
}
