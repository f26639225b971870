//! The gossip envelope, `ClusterKey::open`, and the foca payload behind it (postcard), as the
//! gossip task handles a datagram.
//!
//! A fuzzer cannot forge the HMAC tag, so every input is used twice: as a packet from
//! someone without the key (`open` must refuse it, or give back exactly what `seal` would
//! have wrapped), and, with its first `ENVELOPE_OVERHEAD` bytes taken as the envelope, as
//! the payload of a packet a key holder sealed, which goes on to foca. The seeds are real
//! sealed packets, so mutations of their payloads explore foca's decoding.
#![no_main]

use std::sync::OnceLock;

use foca::{AccumulatingRuntime, Codec, Foca, Header, PostcardCodec};
use libfuzzer_sys::fuzz_target;
use murmur::cluster::envelope::{ENVELOPE_OVERHEAD, Opened, ReplayWindow, Stamp};
use murmur::cluster::gossip::foca_config;
use murmur::cluster::membership::{MembershipView, NodeId};
use murmur::cluster::security::ClusterKey;
use murmur_fuzz::{fuzz_cluster_key, receiver_identity};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The gossip task's largest datagram (`MAX_PACKET`).
const MAX_PACKET: usize = 1400;

fn key() -> &'static ClusterKey {
    static KEY: OnceLock<ClusterKey> = OnceLock::new();
    KEY.get_or_init(fuzz_cluster_key)
}

fuzz_target!(|data: &[u8]| {
    let key = key();
    // The stamp a key holder would have put on a payload taken from the input.
    let stamp_of = |bytes: &[u8]| Stamp {
        sent_at_ms: bytes
            .iter()
            .take(8)
            .fold(0u64, |n, b| (n << 8) | u64::from(*b)),
        nonce: bytes
            .iter()
            .skip(8)
            .take(8)
            .fold(0u64, |n, b| (n << 8) | u64::from(*b)),
    };
    let (payload, stamp) = match key.open(data) {
        Ok(Opened { stamp, payload }) => {
            assert_eq!(
                key.seal(payload, stamp),
                data,
                "open accepted a packet seal did not make"
            );
            (payload, stamp)
        }
        Err(_) => (
            data.get(ENVELOPE_OVERHEAD..).unwrap_or_default(),
            stamp_of(data),
        ),
    };
    let sealed = key.seal(payload, stamp);
    assert_eq!(
        key.open(&sealed),
        Ok(Opened { stamp, payload }),
        "seal and open disagree"
    );
    // The replay window takes any stamp without panicking, and never the same one twice.
    let mut window = ReplayWindow::new(std::time::Duration::from_secs(30));
    let now = stamp.sent_at_ms;
    if window.check(stamp, now).is_ok() {
        assert!(
            window.check(stamp, now).is_err(),
            "a replay was let through"
        );
    }

    check_header_round_trip(payload);

    let identity = receiver_identity();
    let mut foca = Foca::new(
        identity.clone(),
        foca_config(),
        StdRng::seed_from_u64(7),
        PostcardCodec,
    );
    let mut runtime = AccumulatingRuntime::new();
    let _ = foca.handle_data(payload, &mut runtime);
    // The same packet again, as a replay would bring it.
    let _ = foca.handle_data(payload, &mut runtime);

    let mut view = MembershipView::default();
    view.set_self(identity);
    view.refresh(foca.iter_membership_state());
    let _ = view.members();
    let _ = view.live_peers();

    while let Some((_, answer)) = runtime.to_send() {
        assert!(
            answer.len() + ENVELOPE_OVERHEAD <= MAX_PACKET,
            "foca answered with a {} byte packet",
            answer.len()
        );
    }
});

/// A header foca's codec reads is written back and read again to the same header.
fn check_header_round_trip(payload: &[u8]) {
    let mut codec = PostcardCodec;
    let mut rest = payload;
    let Ok(header) = Codec::<NodeId>::decode_header(&mut codec, &mut rest) else {
        return;
    };
    let mut written = Vec::new();
    codec
        .encode_header(&header, &mut written)
        .expect("a decoded header encodes");
    let back: Header<NodeId> = codec
        .decode_header(&written[..])
        .expect("an encoded header decodes");
    assert_eq!(back, header);
}
