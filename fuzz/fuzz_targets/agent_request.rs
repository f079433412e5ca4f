//! Fuzzes what the agent does with untrusted bytes from the host before any
//! handler runs: a ttrpc frame (header, 4 MiB limit, Request envelope) and the
//! protobuf request message of every method of grpc.AgentService and
//! grpc.Health.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::requests::{decode_request, decode_request_frame, REQUEST_PATHS};

fuzz_target!(|data: &[u8]| {
    // The input as a whole frame, as read from the socket.
    if let Ok(request) = decode_request_frame(data) {
        // whatever decodes must encode again
        let bytes = request
            .message
            .write_to_bytes_dyn()
            .expect("re-encode a decoded request");
        decode_request(&request.path, &bytes).expect("decode a re-encoded request");
    }

    // The input as the payload of one method, picked by the first byte, so
    // every request type is reached without the fuzzer having to discover
    // the envelope first.
    if let Some((&selector, payload)) = data.split_first() {
        let path = REQUEST_PATHS[selector as usize % REQUEST_PATHS.len()];
        if let Ok(message) = decode_request(path, payload) {
            let bytes = message
                .write_to_bytes_dyn()
                .expect("re-encode a decoded request");
            let again = decode_request(path, &bytes).expect("decode a re-encoded request");
            assert!(
                message
                    .descriptor_dyn()
                    .eq(message.as_ref(), again.as_ref()),
                "{path}: decode(encode(m)) != m"
            );
        }
    }
});
