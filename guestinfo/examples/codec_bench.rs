//! Decode and write-back cost on the port layer's fixture, the work the tether does on its
//! boot path. `cargo run --release -p guestinfo --example codec_bench`.

use std::time::Instant;

fn main() {
    let map: guestinfo::Map =
        match serde_json::from_str(include_str!("../testdata/pl_container.json")) {
            Ok(m) => m,
            Err(e) => return eprintln!("fixture: {e}"),
        };
    let n = 2000;
    let t = Instant::now();
    let mut cfg = None;
    for _ in 0..n {
        cfg = guestinfo::decode(&map).ok();
    }
    let decode = t.elapsed() / n;
    let Some(cfg) = cfg else {
        return eprintln!("fixture does not decode");
    };
    let t = Instant::now();
    let mut len = 0;
    for _ in 0..n {
        len = guestinfo::guest_writeback(&cfg)
            .map(|v| v.len())
            .unwrap_or(0);
    }
    let wb = t.elapsed() / n;
    println!(
        "{} keys: decode {:?}, guest_writeback {:?} ({len} pairs)",
        map.len(),
        decode,
        wb
    );
}
