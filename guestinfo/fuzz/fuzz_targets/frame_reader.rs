//! The QEMU stand-in frame reader on arbitrary byte streams, fed in arbitrary chunks, with
//! valid frames spliced in: no panic, bounded buffering, and valid frames that follow any
//! garbage are still found.
#![no_main]

use guestinfo::transport::frame::{
    encode_frame, FrameEvent, FrameReader, Message, HEADER_LEN, MAX_PAYLOAD,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u8>, Vec<u8>, String)| {
    let (garbage, chunking, text) = input;
    let mut r = FrameReader::new();
    let mut events = Vec::new();
    let mut rest = garbage.as_slice();
    let mut sizes = chunking.iter().cycle();
    while !rest.is_empty() {
        let n = usize::from(*sizes.next().unwrap_or(&255))
            .max(1)
            .min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        r.push(chunk);
        while let Some(ev) = r.next_event() {
            events.push(ev);
        }
        assert!(r.pending() <= HEADER_LEN + MAX_PAYLOAD + n);
        rest = tail;
    }
    // A valid frame after the garbage must come out, possibly after corruption reports
    // (the garbage may end in an incomplete frame header that the new frame completes or
    // truncates).
    let msg = Message::Push { command: text };
    let Ok(frame) = encode_frame(&msg) else {
        return;
    };
    for _ in 0..2 {
        r.push(&frame);
    }
    let mut found = 0;
    while let Some(ev) = r.next_event() {
        if ev == FrameEvent::Message(msg.clone()) {
            found += 1;
        }
    }
    assert!(found >= 1, "a valid frame after garbage was lost");
    let _ = r.finish();
});
