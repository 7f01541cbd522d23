//! The output-log record reader and the VIC log reader on arbitrary bytes, fed in arbitrary
//! chunk sizes: they must never panic, never loop, and every valid record they return must
//! re-encode to bytes that were in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map(|b| usize::from(*b) % 64 + 1).unwrap_or(1);
    let mut dec = iolog::Decoder::new();
    let mut consumed = 0usize;
    for chunk in data.chunks(cut) {
        dec.push(chunk);
        while let Some(item) = dec.next_item() {
            match item {
                iolog::Item::Record(r) => {
                    let frame = iolog::encode(&r).expect("a decoded record re-encodes");
                    assert!(data.windows(frame.len()).any(|w| w == frame.as_slice()));
                    consumed += frame.len();
                }
                iolog::Item::Damage(d) => consumed += d.bytes,
            }
        }
    }
    if let Some(d) = dec.finish() {
        consumed += d.bytes;
    }
    assert_eq!(consumed, data.len(), "every byte is either a record or damage");
    let _ = iolog::vic::decode_all(data);
});
