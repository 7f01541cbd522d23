//! A whole server connection fed with arbitrary client bytes: version exchange,
//! KEXINIT parsing and negotiation, ECDH_INIT handling and signing, and everything the
//! driver does with unencrypted input.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

fn config() -> Arc<sshproto::ServerConfig> {
    static CONFIG: OnceLock<Arc<sshproto::ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut c =
                sshproto::ServerConfig::new(sshproto::PrivateKey::from_ed25519_seed([9; 32]))
                    .allow_none_for(["daemon"]);
            c.common.handshake_timeout = Duration::from_secs(5);
            Arc::new(c)
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let (ours, mut theirs) = tokio::io::duplex(data.len() + 64 * 1024);
        let _ = theirs.write_all(data).await;
        let _ = theirs.shutdown().await;
        // The input ends with EOF, so the server finishes (with an error) on its own.
        let r = sshproto::Server::accept(ours, config()).await;
        assert!(r.is_err(), "a handshake completed from unencrypted input");
        drop(theirs);
    });
});
