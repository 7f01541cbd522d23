//! The message parser and the decoders of request payloads and key blobs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sshproto::testing::parse_message(data);
    let _ = sshproto::WindowChange::decode(data);
    let _ = sshproto::PtyRequest::decode(data);
    let _ = sshproto::ExitSignal::decode(data);
    let _ = sshproto::decode_name_list(data);
    if let Ok(key) = sshproto::PublicKey::from_blob(data) {
        // A parsed key must survive verifying garbage.
        let _ = key.verify(sshproto::SignatureAlgorithm::RsaSha1, b"data", data);
        let _ = key.verify(sshproto::SignatureAlgorithm::Ed25519, b"data", data);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = sshproto::PublicKey::from_openssh(s);
    }
});
