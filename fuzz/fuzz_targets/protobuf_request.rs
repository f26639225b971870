//! The protobuf client-frame decoder, `murmur::protocol::protobuf::decode`, on any binary
//! frame.
//!
//! Checks, beyond "no panic": a decoded request decodes the same once encoded again, a
//! request with a JSON payload can be said in JSON and reads the same there, and a refused
//! frame gets an error reply that is itself a valid `ServerFrame`.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use murmur::event::Payload;
use murmur::protocol::{Request, json, protobuf};
use murmur_fuzz::{is_json_text, to_json, to_protobuf};
use murmur_proto::client::v1 as pb;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let request = match protobuf::decode(Bytes::copy_from_slice(data)) {
        Ok(request) => request,
        Err(refused) => {
            let reply = protobuf::encode_reply(&refused.reply());
            assert!(
                pb::ServerFrame::decode(reply).is_ok(),
                "error reply does not decode"
            );
            return;
        }
    };

    assert_eq!(
        protobuf::decode(to_protobuf(&request)).as_ref(),
        Ok(&request),
        "re-encoded protobuf reads differently"
    );

    if let Request::Publish {
        payload: Payload::Json(bytes),
        ..
    } = &request
    {
        // JSON subscribers get this payload as it is, inside their text frames.
        assert!(
            is_json_text(bytes),
            "accepted ENCODING_JSON data that is not JSON text"
        );
    }

    // In JSON the payload is the text between the separators, without surrounding
    // whitespace; everything else must read the same.
    if let Some(text) = to_json(&request) {
        let from_json = json::decode(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
        assert_eq!(from_json, trimmed_payload(request), "as JSON: {text}");
    }
});

fn trimmed_payload(mut request: Request) -> Request {
    if let Request::Publish {
        payload: Payload::Json(bytes),
        ..
    } = &mut request
    {
        let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        let start = bytes
            .iter()
            .position(|b| !is_space(b))
            .unwrap_or(bytes.len());
        let end = bytes
            .iter()
            .rposition(|b| !is_space(b))
            .map_or(start, |i| i + 1);
        *bytes = bytes.slice(start..end);
    }
    request
}
