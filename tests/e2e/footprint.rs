//! The tether binary stays small and static: CI fails if it grows past 2.5 MB (issue 17's
//! budget) or gains a dynamic loader (scripts/build-iso builds it before the tests run).

#[test]
fn tether_binary_is_static_and_within_2_5_mb() {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-unknown-linux-musl/release/tether");
    let size = std::fs::metadata(&bin)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-iso)", bin.display()))
        .len();
    assert!(
        size <= 2_500_000,
        "tether is {size} bytes, over the 2.5 MB budget"
    );
    let out = std::process::Command::new("file")
        .arg(&bin)
        .output()
        .expect("file(1) is installed by scripts/setup");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("static"), "not a static binary: {text}");
}
