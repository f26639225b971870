//! The JSON client-frame decoder, `murmur::protocol::json::decode`, on any text frame.
//!
//! Checks, beyond "no panic": a decoded request says the same thing once encoded again (in
//! JSON, and in protobuf), topics and patterns go through the checks the session runs next
//! without panicking, and a refused frame gets an error reply that is itself valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use murmur::event::Payload;
use murmur::protocol::{Request, json, protobuf};
use murmur::routing::topic;
use murmur_fuzz::{is_json_text, normalized, to_json, to_protobuf};

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8: the socket refuses anything else before decoding.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let request = match json::decode(text) {
        Ok(request) => request,
        Err(refused) => {
            let reply = json::encode_reply(&refused.reply());
            assert!(
                serde_json::from_str::<serde_json::Value>(&reply).is_ok(),
                "error reply is not JSON: {reply}"
            );
            return;
        }
    };

    if let Request::Publish {
        payload: Payload::Json(bytes),
        ..
    } = &request
    {
        assert!(
            is_json_text(bytes),
            "accepted a payload that is not JSON text"
        );
    }

    let again = to_json(&request).expect("a JSON request can be said in JSON");
    assert_eq!(
        json::decode(&again).as_ref(),
        Ok(&request),
        "re-encoded as {again}"
    );

    // The same request in protobuf reads the same, but for what protobuf cannot say (a set
    // but empty `client`, `token`) and what it refuses outright (an empty `group`, which the
    // session refuses for JSON too).
    let empty_group = matches!(&request, Request::Subscribe(s) if s.group.as_deref() == Some(""));
    if !empty_group {
        assert_eq!(
            protobuf::decode(to_protobuf(&request)),
            Ok(normalized(&request))
        );
    }

    exercise_session_checks(&request);
});

/// What the session does with a request before it touches any state.
fn exercise_session_checks(request: &Request) {
    let _ = request.reference();
    match request {
        Request::Subscribe(sub)
            if topic::validate_pattern(&sub.topic, topic::DEFAULT_MAX_TOPIC_BYTES).is_ok() =>
        {
            for (name, _) in sub.from.cursors(&sub.topic) {
                let _ = topic::pattern_matches(&sub.topic, name);
            }
        }
        Request::Publish { topic: name, .. } => {
            let _ = topic::validate_publish_topic(name, topic::DEFAULT_MAX_TOPIC_BYTES);
        }
        Request::Hello {
            batch: Some(batch), ..
        } => {
            let granted = murmur::protocol::BatchLimits::granted(*batch);
            assert!(granted.max_events <= murmur::protocol::BatchLimits::MAX_EVENTS);
            assert!(granted.max_bytes <= murmur::protocol::BatchLimits::MAX_BYTES);
        }
        _ => {}
    }
}
