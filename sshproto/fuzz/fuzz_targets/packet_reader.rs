//! The binary packet reader: framing, lengths, padding, decryption and MAC checks with
//! the `none` cipher and each real cipher (fixed keys), each payload handed on to the
//! message parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sshproto::testing::decode_packets(data);
});
