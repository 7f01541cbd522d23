//! An OCI image layout of a three-layer image (behind a multi-platform index; gzip and plain
//! layers) whose upper layers delete a file, make a directory opaque, hard-link a file of a
//! lower layer, add a setuid binary and a binary with a file capability: inside the VM the
//! root filesystem is what the OCI image spec says.

use e2e::images::{
    busybox_binary, busybox_layer, config, gzip, sha, Layer, Oci, LAYER_GZ, LAYER_TAR, OCI_INDEX,
    OCI_MANIFEST,
};
use e2e::Vch;
use serde_json::json;

/// `security.capability` of `cap_net_raw+ep` (VFS_CAP_REVISION_2: magic with the effective
/// flag, then permitted and inheritable, low and high words).
const CAP_NET_RAW_EP: &[u8] = &[
    0x01, 0, 0, 0x02, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// What the VM prints: one `key: value` line per property.
const PROBE: &str = r#"
test -e /etc/doomed && echo "whiteout: present" || echo "whiteout: gone"
echo "opaque: $(ls -A /opt/dir | tr '\n' ' ')"
echo "hardlink: $(stat -c '%i %h' /data/shared.txt) $(stat -c '%i %h' /data/link.txt) $(cat /data/link.txt)"
echo "setuid: $(stat -c '%a %u %g' /usr/local/suid/busybox)"
echo "capability: $(su user -c '/usr/local/cap/busybox grep CapPrm /proc/self/status' | tr -s '\t ' ' ')"
echo "without: $(su user -c '/bin/busybox grep CapPrm /proc/self/status' | tr -s '\t ' ' ')"
"#;

#[test]
fn oci_layers_apply_as_the_spec_says_inside_the_vm() {
    let vch = Vch::new();
    let bin = busybox_binary();
    let base = busybox_layer()
        .file("etc/doomed", b"deleted by a whiteout above\n", 0o644)
        .dir("opt", 0o755)
        .dir("opt/dir", 0o755)
        .file("opt/dir/a", b"a", 0o644)
        .file("opt/dir/b", b"b", 0o644)
        .dir("data", 0o755)
        .file("data/shared.txt", b"one file, two names\n", 0o644)
        .tar();
    let middle = Layer::new()
        .file("etc/.wh.doomed", b"", 0o644)
        .file("opt/dir/.wh..wh..opq", b"", 0o644)
        .file("opt/dir/c", b"c", 0o644)
        .hardlink("data/link.txt", "data/shared.txt")
        .tar();
    let top = Layer::new()
        .dir("usr", 0o755)
        .dir("usr/local", 0o755)
        .dir("usr/local/suid", 0o755)
        .file("usr/local/suid/busybox", &bin, 0o4755)
        .dir("usr/local/cap", 0o755)
        .file_xattrs(
            "usr/local/cap/busybox",
            &bin,
            0o755,
            &[("security.capability", CAP_NET_RAW_EP)],
        )
        .tar();
    let cfg = config(&[&base, &middle, &top], json!({"Cmd": ["sh"]}));
    let mut oci = Oci::default();
    let manifest = oci.manifest(
        &cfg,
        &[
            (gzip(&base), LAYER_GZ),
            (gzip(&middle), LAYER_GZ),
            (top, LAYER_TAR),
        ],
    );
    let mut amd64 = oci.descriptor(OCI_MANIFEST, &manifest);
    amd64["platform"] = json!({"architecture": "amd64", "os": "linux"});
    // Another platform's manifest, not in the archive: only linux/amd64 is read.
    let arm64 = json!({
        "mediaType": OCI_MANIFEST,
        "digest": sha(b"an arm64 manifest not in this archive").to_string(),
        "size": 37,
        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
    });
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [arm64, amd64],
    }))
    .expect("index JSON");
    let mut index = oci.descriptor(OCI_INDEX, &nested);
    index["annotations"] = json!({
        "io.containerd.image.name": "docker.io/tether-e2e/layers:oci",
        "org.opencontainers.image.ref.name": "oci",
    });
    let archive = oci.archive(json!({"schemaVersion": 2, "manifests": [index]}));
    let file = vch.dir.path().join("layers.oci.tar");
    std::fs::write(&file, &archive).expect("write archive");

    let (code, out, err) = vch.cmd(&["load", "-i", file.to_str().expect("path")]);
    assert_eq!(
        (code, out.as_str()),
        (0, "Loaded image: tether-e2e/layers:oci\n"),
        "{err}"
    );
    let (code, out, err) = vch.cmd(&[
        "run",
        "--network",
        "none",
        "--timeout",
        "120",
        "tether-e2e/layers:oci",
        "sh",
        "-c",
        PROBE,
    ]);
    assert_eq!(code, 0, "{err}\n{out}");
    let line = |key: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} line in:\n{out}\n{err}"))
            .trim()
            .to_owned()
    };
    assert_eq!(line("whiteout"), "gone", "{out}");
    assert_eq!(line("opaque"), "c", "{out}");
    let hl: Vec<String> = line("hardlink")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(hl.len(), 8, "{out}");
    assert_eq!(hl[0], hl[2], "not the same inode: {out}");
    assert_eq!((hl[1].as_str(), hl[3].as_str()), ("2", "2"), "{out}");
    assert_eq!(hl[4..].join(" "), "one file, two names", "{out}");
    assert_eq!(line("setuid"), "4755 0 0", "{out}");
    // The kernel gave an unprivileged user's process cap_net_raw (bit 13) from the file's
    // security.capability, and nothing from the plain copy.
    assert_eq!(line("capability"), "CapPrm: 0000000000002000", "{out}");
    assert_eq!(line("without"), "CapPrm: 0000000000000000", "{out}");
}
