//! Broken archives: a truncated one, a layer whose digest does not match the config, a
//! manifest naming a file the archive lacks, a layer entry escaping the root. Each is a clear
//! error of `vch load`, and nothing of it stays in the store.

use e2e::images::{archive, busybox_layer, config, docker_save, Layer};
use e2e::Vch;
use serde_json::json;

/// Loads `bytes` with `vch load -i`; returns stderr after checking that the load failed
/// and that the store holds exactly what it held before.
fn refused(vch: &Vch, name: &str, bytes: &[u8]) -> String {
    let before = (
        vch.image_ids(),
        vch.store_entries("ids"),
        vch.store_entries("layers"),
        vch.store_entries("disks"),
    );
    let file = vch.dir.path().join(name);
    std::fs::write(&file, bytes).expect("write archive");
    let (code, out, err) = vch.cmd(&["load", "-i", file.to_str().expect("path")]);
    assert_ne!(code, 0, "{name} loaded: {out}");
    assert_eq!(out, "", "{name}");
    let after = (
        vch.image_ids(),
        vch.store_entries("ids"),
        vch.store_entries("layers"),
        vch.store_entries("disks"),
    );
    assert_eq!(before, after, "{name} left something in the store");
    assert!(
        vch.store_entries("tmp").is_empty(),
        "{name} left staging behind: {:?}",
        vch.store_entries("tmp")
    );
    err
}

#[test]
fn broken_archives_are_clear_errors_and_leave_nothing() {
    let vch = Vch::new();
    // The store as every state directory starts: the built-in busybox image.
    assert_eq!(vch.image_ids().len(), 1);
    let layer = busybox_layer().tar();
    let cfg = config(&[&layer], json!({"Cmd": ["sh"]}));
    let good = docker_save(&cfg, std::slice::from_ref(&layer), &["tether-e2e/broken:1"]);

    let err = refused(&vch, "truncated.tar", &good[..good.len() / 2]);
    assert!(err.contains("truncated"), "{err}");

    let mut other = layer.clone();
    let at = other.len() / 2; // inside the busybox binary's data
    other[at] ^= 0xff;
    let err = refused(
        &vch,
        "digest.tar",
        &docker_save(&cfg, &[other], &["tether-e2e/broken:1"]),
    );
    assert!(
        err.contains("its content has digest") && err.contains("layer 1 of 1"),
        "{err}"
    );

    let manifest = json!([{
        "Config": "cfg.json",
        "RepoTags": ["tether-e2e/broken:1"],
        "Layers": ["missing/layer.tar"],
    }]);
    let err = refused(
        &vch,
        "missing.tar",
        &archive(&[
            ("cfg.json".into(), cfg.clone()),
            (
                "manifest.json".into(),
                serde_json::to_vec(&manifest).expect("JSON"),
            ),
        ]),
    );
    assert!(
        err.contains("the archive lacks \"missing/layer.tar\""),
        "{err}"
    );

    let escape = Layer::new()
        .dir("etc", 0o755)
        .raw_name(b"../../etc/evil", b"x")
        .tar();
    let cfg2 = config(&[&escape], json!({}));
    let err = refused(
        &vch,
        "escape.tar",
        &docker_save(&cfg2, &[escape], &["tether-e2e/broken:1"]),
    );
    assert!(err.contains("escapes the root"), "{err}");

    // And the good one still loads.
    let file = vch.dir.path().join("good.tar");
    std::fs::write(&file, &good).expect("write archive");
    let (code, out, err) = vch.cmd(&["load", "-i", file.to_str().expect("path")]);
    assert_eq!(
        (code, out.as_str()),
        (0, "Loaded image: tether-e2e/broken:1\n"),
        "{err}"
    );
}
