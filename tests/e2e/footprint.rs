//! The tether binary stays small and static: CI fails if it grows past 3 MB or gains a
//! dynamic loader (scripts/build-iso builds it before the tests run).

#[test]
fn tether_binary_is_static_and_under_3_mb() {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-unknown-linux-musl/release/tether");
    let size = std::fs::metadata(&bin)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-iso)", bin.display()))
        .len();
    assert!(
        size <= 3_000_000,
        "tether is {size} bytes, over the 3 MB budget"
    );
    let out = std::process::Command::new("file")
        .arg(&bin)
        .output()
        .expect("file(1) is installed by scripts/setup");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("static"), "not a static binary: {text}");
}
