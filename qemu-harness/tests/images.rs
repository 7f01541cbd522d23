//! The image store against archives built here, offline: docker-save and OCI layouts,
//! layer semantics checked on the resulting ext4 disk with debugfs (nothing is mounted),
//! broken archives, sharing of base layers, a build as an unprivileged user.
//!
//! Needs e2fsprogs (mkfs.ext4, debugfs, e2fsck) and qemu-img; no VM, no docker.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use qemu_harness::image::sbin_tool;
use qemu_harness::images::{
    ContainerUse, Digest, ImageStore, ImportOptions, Removed, Silent, StoreError,
};
use serde_json::json;

// ---------------------------------------------------------------- building archives

fn sha(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

/// A layer tarball, entry by entry.
struct Layer {
    b: tar::Builder<Vec<u8>>,
}

fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(0);
    h
}

impl Layer {
    fn new() -> Layer {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn dir(self, path: &str, mode: u32) -> Layer {
        self.dir_owned(path, mode, 0, 0)
    }

    fn dir_owned(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Layer {
        let mut h = header(tar::EntryType::Directory, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    fn file(self, path: &str, data: &[u8], mode: u32) -> Layer {
        self.file_full(path, data, mode, 0, 0, 1_600_000_000, &[])
    }

    #[allow(clippy::too_many_arguments)]
    fn file_full(
        mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        xattrs: &[(&str, &[u8])],
    ) -> Layer {
        if !xattrs.is_empty() {
            let keys: Vec<String> = xattrs
                .iter()
                .map(|(k, _)| format!("SCHILY.xattr.{k}"))
                .collect();
            self.b
                .append_pax_extensions(
                    keys.iter()
                        .map(String::as_str)
                        .zip(xattrs.iter().map(|(_, v)| *v)),
                )
                .unwrap();
        }
        let mut h = header(tar::EntryType::Regular, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    fn symlink(mut self, path: &str, target: &str) -> Layer {
        let mut h = header(tar::EntryType::Symlink, 0o777);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    fn symlink_owned(mut self, path: &str, target: &str, uid: u64) -> Layer {
        let mut h = header(tar::EntryType::Symlink, 0o777);
        h.set_uid(uid);
        h.set_gid(uid);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    fn hardlink(mut self, path: &str, target: &str) -> Layer {
        let mut h = header(tar::EntryType::Link, 0o644);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    fn device(
        mut self,
        path: &str,
        kind: tar::EntryType,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> Layer {
        let mut h = header(kind, mode);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// An entry whose name is written as is (the tar crate refuses `..` in paths).
    fn raw_name(mut self, name: &[u8], data: &[u8]) -> Layer {
        let mut h = header(tar::EntryType::Regular, 0o644);
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn tar(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// An image config for layers given uncompressed.
fn config(layers: &[&[u8]], container: serde_json::Value) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l).to_string()).collect();
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-05-06T07:08:09.123456789Z",
        "config": container,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-05-06T07:08:09Z", "created_by": "test"}],
    }))
    .unwrap()
}

/// A whole archive from (name, bytes) members.
fn archive(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = header(tar::EntryType::Regular, 0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// A `docker save` archive of one image: layers as given (compressed or not).
fn docker_save(cfg: &[u8], layers: &[Vec<u8>], tags: &[&str], repositories: bool) -> Vec<u8> {
    let cfg_name = format!("{}.json", sha(cfg).hex());
    let mut members = Vec::new();
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("{:064x}/layer.tar", i + 1);
        members.push((name.clone(), l.clone()));
        members.push((format!("{:064x}/VERSION", i + 1), b"1.0".to_vec()));
        names.push(name);
    }
    members.push((cfg_name.clone(), cfg.to_vec()));
    if repositories {
        let mut repos = BTreeMap::new();
        for t in tags {
            let (n, tag) = t.split_once(':').unwrap_or((t, "latest"));
            repos.insert(
                n.to_string(),
                json!({ tag: format!("{:064x}", layers.len()) }),
            );
        }
        members.push(("repositories".into(), serde_json::to_vec(&repos).unwrap()));
    }
    let manifest = json!([{ "Config": cfg_name, "RepoTags": tags, "Layers": names }]);
    // docker writes manifest.json last: a loader must not need it first.
    members.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    archive(&members)
}

/// An OCI image layout under construction.
#[derive(Default)]
struct Oci {
    blobs: BTreeMap<String, Vec<u8>>,
}

impl Oci {
    fn blob(&mut self, bytes: &[u8]) -> serde_json::Value {
        let d = sha(bytes);
        self.blobs.insert(d.hex().to_owned(), bytes.to_vec());
        json!({"digest": d.to_string(), "size": bytes.len()})
    }

    fn descriptor(&mut self, media: &str, bytes: &[u8]) -> serde_json::Value {
        let mut d = self.blob(bytes);
        d["mediaType"] = json!(media);
        d
    }

    /// An image manifest: config plus layers (each given as stored, with its media type).
    fn manifest(&mut self, cfg: &[u8], layers: &[(Vec<u8>, &str)]) -> Vec<u8> {
        let config = self.descriptor("application/vnd.oci.image.config.v1+json", cfg);
        let layers: Vec<_> = layers
            .iter()
            .map(|(l, media)| self.descriptor(media, l))
            .collect();
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        }))
        .unwrap()
    }

    fn archive(&self, index: serde_json::Value) -> Vec<u8> {
        let mut members: Vec<(String, Vec<u8>)> = vec![(
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        )];
        members.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
        for (hex, b) in &self.blobs {
            members.push((format!("blobs/sha256/{hex}"), b.clone()));
        }
        archive(&members)
    }
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const LAYER_ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

// ---------------------------------------------------------------- reading disks

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("tether-images-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn store(&self) -> ImageStore {
        ImageStore::new(&self.0).with_disk_size(64 << 20)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// An image's disk read out to raw, for debugfs.
struct Raw(PathBuf);

impl Raw {
    fn of(store: &ImageStore, id: &Digest, scratch: &Path) -> Raw {
        let top = store.image_disk(id, &Silent).unwrap();
        let out = scratch.join(format!("{}.raw", id.short()));
        let _ = fs::remove_file(&out);
        let st = Command::new(sbin_tool("qemu-img"))
            .args(["convert", "-O", "raw"])
            .arg(&top)
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        Raw(out)
    }

    fn debugfs(&self, request: &str) -> String {
        qemu_harness::images::debugfs::request(&self.0, request).unwrap()
    }

    fn stat(&self, path: &str) -> String {
        let s = self.debugfs(&format!("stat \"{path}\""));
        assert!(s.contains("Inode:"), "{path} missing: {s}");
        s
    }

    fn exists(&self, path: &str) -> bool {
        self.debugfs(&format!("stat \"{path}\"")).contains("Inode:")
    }

    fn cat(&self, path: &str) -> String {
        self.debugfs(&format!("cat \"{path}\""))
    }

    fn inode(&self, path: &str) -> String {
        let s = self.stat(path);
        s.split_whitespace().nth(1).unwrap().to_owned()
    }

    fn xattr(&self, path: &str, name: &str) -> Vec<u8> {
        let out = self.0.with_extension(format!("xattr{}", rand_suffix()));
        self.debugfs(&format!("ea_get -f {} \"{path}\" {name}", out.display()));
        let v = fs::read(&out).unwrap_or_default();
        let _ = fs::remove_file(&out);
        v
    }

    fn fsck_clean(&self) {
        let out = Command::new(sbin_tool("e2fsck"))
            .arg("-fn")
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "e2fsck: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn field<'a>(stat: &'a str, name: &str) -> &'a str {
    let at = stat
        .find(name)
        .unwrap_or_else(|| panic!("no {name} in {stat}"));
    stat[at + name.len()..].split_whitespace().next().unwrap()
}

fn qemu_img_ok(args: &[&str]) {
    let out = Command::new(sbin_tool("qemu-img"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Nothing but empty directories (and the lock files) in the store.
fn assert_store_empty(store: &ImageStore) {
    for sub in ["ids", "layers", "disks", "tmp"] {
        let d = store.root().join(sub);
        let left: Vec<_> = fs::read_dir(&d)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{sub} holds {left:?}");
    }
    assert!(store.list().unwrap().is_empty());
}

// ---------------------------------------------------------------- tests

fn tiny_rootfs() -> Vec<u8> {
    Layer::new()
        .dir("bin", 0o755)
        .dir("etc", 0o755)
        .file("bin/hello", b"#!/bin/sh\necho hello\n", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .dir("tmp", 0o1777)
        .tar()
}

#[test]
fn docker_save_archive_loads_with_names_and_config() {
    let s = Scratch::new("docker-save");
    let store = s.store();
    let layer = tiny_rootfs();
    let cfg = config(
        &[&layer],
        json!({"Cmd": ["/bin/hello"], "Env": ["PATH=/bin"], "WorkingDir": "/tmp", "Labels": {"k": "v"}}),
    );
    let id = sha(&cfg);
    for repositories in [false, true] {
        let tar = docker_save(
            &cfg,
            std::slice::from_ref(&layer),
            &["busybox:latest", "me/tiny:1"],
            repositories,
        );
        // The whole archive gzipped, as `docker save | gzip` gives it.
        let input = if repositories { gzip(&tar) } else { tar };
        let loaded = store.load(&input[..], &Silent).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].id, id);
        assert_eq!(loaded[0].tags, ["busybox:latest", "me/tiny:1"]);
        assert!(loaded[0].moved.is_empty());
    }
    for r in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox:latest",
        "me/tiny:1",
        "docker.io/me/tiny:1",
        id.as_str(),
        id.hex(),
        &id.hex()[..5],
        &format!("sha256:{}", &id.hex()[..7]),
    ] {
        assert_eq!(store.resolve(r).unwrap(), id, "{r}");
    }
    for r in ["busybox:1", "me/tiny", "nothing", "abcdefg"] {
        assert!(store.resolve(r).unwrap_err().is_not_found(), "{r}");
    }
    let img = store.inspect("busybox").unwrap();
    assert_eq!(img.repo_tags, ["busybox:latest", "me/tiny:1"]);
    assert_eq!(img.config.cmd, Some(vec!["/bin/hello".to_string()]));
    assert_eq!(img.config.working_dir.as_deref(), Some("/tmp"));
    assert_eq!(img.layers, vec![sha(&layer)]);
    assert_eq!(img.size, layer.len() as u64);
    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].created, 1_714_979_289);
    assert_eq!(list[0].labels["k"], "v");

    let raw = Raw::of(&store, &id, &s.0);
    raw.fsck_clean();
    assert_eq!(raw.cat("/bin/hello"), "#!/bin/sh\necho hello\n");
    let st = raw.stat("/tmp");
    assert_eq!(field(&st, "Mode:"), "01777");
    let label = raw.debugfs("stats");
    assert!(
        label.contains("Filesystem volume name:   containerfs"),
        "{label}"
    );

    // Disks lost from the store are built again from the layers when a container needs them.
    fs::remove_dir_all(store.root().join("disks")).unwrap();
    fs::create_dir_all(store.root().join("disks")).unwrap();
    let rebuilt = Raw::of(&store, &id, &s.0);
    rebuilt.fsck_clean();
    assert_eq!(rebuilt.cat("/bin/hello"), "#!/bin/sh\necho hello\n");

    // A container's disk is an overlay: it copies nothing.
    let vm = s.0.join("vm1");
    let disk = store.container_disk(&id, &vm, &Silent).unwrap();
    assert_eq!(disk.format, "qcow2");
    assert!(fs::metadata(&disk.path).unwrap().len() < 1 << 20);
    qemu_img_ok(&["check", disk.path.to_str().unwrap()]);
}

#[test]
fn oci_layout_applies_layers_as_the_spec_says() {
    let s = Scratch::new("oci");
    let store = s.store();
    let (archive_bytes, id) = spec_image();
    let loaded = store.load(&archive_bytes[..], &Silent).unwrap();
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    assert_eq!(loaded[0].id, id);
    assert_eq!(loaded[0].tags, ["spec:test"]);
    check_spec_disk(&store, &id, &s.0);
}

/// A three-layer OCI image (plain, gzip, zstd layers) behind a multi-platform index: the
/// arm64 variant's blobs are absent, so loading it would fail.
fn spec_image() -> (Vec<u8>, Digest) {
    let cap: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let l0 = Layer::new()
        .dir("etc", 0o755)
        .file("etc/hosts", b"127.0.0.1 localhost\n", 0o644)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
        .dir("opq", 0o755)
        .file("opq/old", b"old", 0o644)
        .dir("opq/sub", 0o700)
        .file("opq/sub/deep", b"deep", 0o644)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/tool", b"tool v1", 0o755)
        .file("gone/dir/file", b"implicit parents", 0o600)
        .symlink("etc2", "/etc")
        .tar();
    let l1 = Layer::new()
        .file("etc/.wh.hosts", b"", 0o644)
        .file("opq/.wh..wh..opq", b"", 0o644)
        .file("opq/new", b"new", 0o644)
        .hardlink("usr/bin/tool-link", "usr/bin/tool")
        .file_full("usr/bin/su", b"su binary", 0o4755, 0, 0, 1_500_000_000, &[])
        .file_full(
            "usr/bin/ping",
            b"ping binary",
            0o755,
            0,
            0,
            1_500_000_000,
            &[("security.capability", cap), ("user.note", b"hi")],
        )
        .dir_owned("home", 0o755, 0, 0)
        .dir_owned("home/user", 0o2750, 1000, 1000)
        .file_full(
            "home/user/file",
            b"mine",
            0o640,
            1000,
            1001,
            1_234_567_890,
            &[],
        )
        .symlink("link", "etc/passwd")
        .symlink_owned("ulink", "etc/passwd", 1000)
        .dir("dev", 0o755)
        .device("dev/null", tar::EntryType::Char, 1, 3, 0o666)
        .device("dev/sda", tar::EntryType::Block, 8, 0, 0o660)
        .device("run-fifo", tar::EntryType::Fifo, 0, 0, 0o644)
        .dir("tmp", 0o1777)
        .file("gone/.wh.dir", b"", 0o644)
        .file("name with \"quotes\" and spaces", b"q", 0o644)
        .file("-dash", b"d", 0o644)
        .tar();
    let l2 = Layer::new()
        .file(
            "etc/passwd",
            b"root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
            0o644,
        )
        .file("usr/bin/.wh.tool", b"", 0o644)
        .hardlink("usr/bin/tool-2nd", "usr/bin/tool-link")
        .tar();
    let cfg = config(
        &[&l0, &l1, &l2],
        json!({"Entrypoint": ["/usr/bin/tool"], "User": "1000"}),
    );
    let mut oci = Oci::default();
    let manifest = oci.manifest(
        &cfg,
        &[
            (l0, LAYER_TAR),
            (gzip(&l1), LAYER_GZ),
            (zstd(&l2), LAYER_ZST),
        ],
    );
    let amd = oci.descriptor(OCI_MANIFEST, &manifest);
    let mut amd = amd;
    amd["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let arm = json!({
        "mediaType": OCI_MANIFEST,
        "digest": sha(b"absent arm64 manifest").to_string(),
        "size": 21,
        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
    });
    let attestation = json!({
        "mediaType": OCI_MANIFEST,
        "digest": sha(b"absent attestation").to_string(),
        "size": 18,
        "platform": {"architecture": "unknown", "os": "unknown"},
    });
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [arm, amd, attestation],
    }))
    .unwrap();
    let mut top = oci.descriptor(OCI_INDEX, &nested);
    top["annotations"] = json!({
        "io.containerd.image.name": "docker.io/library/spec:test",
        "org.opencontainers.image.ref.name": "test",
    });
    let bytes = oci.archive(json!({"schemaVersion": 2, "manifests": [top]}));
    (bytes, sha(&cfg))
}

fn check_spec_disk(store: &ImageStore, id: &Digest, scratch: &Path) {
    let raw = Raw::of(store, id, scratch);
    raw.fsck_clean();
    // Whiteouts and opaque directories.
    assert!(!raw.exists("/etc/hosts"));
    assert!(!raw.exists("/etc/.wh.hosts"));
    assert!(!raw.exists("/opq/old"));
    assert!(!raw.exists("/opq/sub"));
    assert!(!raw.exists("/opq/.wh..wh..opq"));
    assert_eq!(raw.cat("/opq/new"), "new");
    assert!(!raw.exists("/gone/dir"));
    assert!(raw.exists("/gone"));
    // Upper layers replace files.
    assert!(raw.cat("/etc/passwd").contains("user:x:1000"));
    // Hard links: to a file of a lower layer, surviving the removal of its first name.
    assert!(!raw.exists("/usr/bin/tool"));
    assert_eq!(
        raw.inode("/usr/bin/tool-link"),
        raw.inode("/usr/bin/tool-2nd")
    );
    assert_eq!(field(&raw.stat("/usr/bin/tool-link"), "Links:"), "2");
    assert_eq!(raw.cat("/usr/bin/tool-2nd"), "tool v1");
    // Modes, owners, times.
    let su = raw.stat("/usr/bin/su");
    assert_eq!(field(&su, "Mode:"), "04755");
    let home = raw.stat("/home/user");
    assert_eq!(field(&home, "Mode:"), "02750");
    assert_eq!(field(&home, "User:"), "1000");
    let f = raw.stat("/home/user/file");
    assert_eq!((field(&f, "User:"), field(&f, "Group:")), ("1000", "1001"));
    assert_eq!(field(&f, "Mode:"), "0640");
    assert!(f.contains("mtime: 0x499602d2"), "{f}");
    assert_eq!(field(&raw.stat("/tmp"), "Mode:"), "01777");
    // File capability and a user xattr.
    assert_eq!(
        raw.xattr("/usr/bin/ping", "security.capability"),
        [1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(raw.xattr("/usr/bin/ping", "user.note"), b"hi");
    // Symlinks, devices, fifos.
    let l = raw.stat("/link");
    assert!(l.contains("Type: symlink"), "{l}");
    assert!(l.contains("Fast link dest: \"etc/passwd\""), "{l}");
    // Metadata of a symlink is the link's own, not its target's.
    let l = raw.stat("/ulink");
    assert_eq!((field(&l, "User:"), field(&l, "Group:")), ("1000", "1000"));
    assert_eq!(field(&raw.stat("/etc/passwd"), "User:"), "0");
    let l = raw.stat("/etc2");
    assert!(l.contains("Fast link dest: \"/etc\""), "{l}");
    let null = raw.stat("/dev/null");
    assert!(null.contains("Type: character special"), "{null}");
    assert_eq!(field(&null, "Mode:"), "0666");
    assert!(null.contains("Device major/minor number: 01:03"), "{null}");
    let sda = raw.stat("/dev/sda");
    assert!(sda.contains("Type: block special"), "{sda}");
    assert!(sda.contains("Device major/minor number: 08:00"), "{sda}");
    assert!(raw.stat("/run-fifo").contains("Type: FIFO"));
    // Awkward names.
    assert_eq!(raw.cat("/name with \"\"quotes\"\" and spaces"), "q");
    assert_eq!(raw.cat("/-dash"), "d");
    assert!(raw.exists("/lost+found"));
}

#[test]
fn broken_archives_are_clear_errors_and_leave_nothing() {
    let s = Scratch::new("broken");
    let store = s.store();
    let layer = tiny_rootfs();
    let cfg = config(&[&layer], json!({}));
    let good = docker_save(&cfg, std::slice::from_ref(&layer), &["t:1"], false);

    // Truncated: the archive stops inside the layer.
    let cut = &good[..good.len() / 2];
    let e = store.load(cut, &Silent).unwrap_err();
    assert!(matches!(e, StoreError::Tar { .. }), "{e}");
    assert!(
        e.to_string().contains("truncated") || e.to_string().contains("EOF"),
        "{e}"
    );
    assert_store_empty(&store);

    // Truncated at an entry boundary: no end-of-archive blocks.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Regular, 0o644);
    h.set_size(3);
    b.append_data(&mut h, "manifest.json", &b"[]\n"[..])
        .unwrap();
    let whole = b.into_inner().unwrap();
    let e = store.load(&whole[..1024], &Silent).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");

    // A layer whose content does not match the config's diff ID.
    let mut other = layer.clone();
    let at = other.len() - 1100; // inside the last file's data or padding
    other[at] ^= 0xff;
    let bad = docker_save(&cfg, &[other], &["t:1"], false);
    let e = store.load(&bad[..], &Silent).unwrap_err();
    match &e {
        StoreError::LayerDigest { layer, .. } => assert!(layer.contains("layer.tar"), "{e}"),
        _ => panic!("{e}"),
    }
    assert!(e.to_string().contains("(layer 1 of 1, t:1)"), "{e}");
    assert_store_empty(&store);

    // A manifest naming a file the archive lacks.
    let manifest =
        json!([{ "Config": "cfg.json", "RepoTags": ["t:1"], "Layers": ["missing/layer.tar"] }]);
    let bad = archive(&[
        ("cfg.json".into(), cfg.clone()),
        (
            "manifest.json".into(),
            serde_json::to_vec(&manifest).unwrap(),
        ),
    ]);
    let e = store.load(&bad[..], &Silent).unwrap_err();
    assert!(
        matches!(&e, StoreError::MissingFile { path, .. } if path == "missing/layer.tar"),
        "{e}"
    );
    assert_store_empty(&store);

    // Path escapes: `..` past the root, and through a symlink of a lower layer.
    let escape = Layer::new()
        .dir("etc", 0o755)
        .raw_name(b"../../evil", b"x")
        .tar();
    let cfg2 = config(&[&escape], json!({}));
    let e = store
        .load(&docker_save(&cfg2, &[escape], &["t:1"], false)[..], &Silent)
        .unwrap_err();
    assert!(e.to_string().contains("escapes the root"), "{e}");
    assert_store_empty(&store);
    let low = Layer::new().symlink("etc", "/host-etc").tar();
    let high = Layer::new().file("etc/passwd", b"owned", 0o644).tar();
    let cfg3 = config(&[&low, &high], json!({}));
    let e = store
        .load(
            &docker_save(&cfg3, &[low, high], &["t:1"], false)[..],
            &Silent,
        )
        .unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
    assert!(matches!(e, StoreError::BadEntry { .. }), "{e}");
    assert_store_empty(&store);
    let hl = Layer::new().hardlink("x", "../../etc/shadow").tar();
    let cfg4 = config(&[&hl], json!({}));
    let e = store
        .load(&docker_save(&cfg4, &[hl], &[], false)[..], &Silent)
        .unwrap_err();
    assert!(e.to_string().contains("escapes the root"), "{e}");
    assert_store_empty(&store);

    // OCI: a compressed blob whose digest is not its descriptor's.
    let mut oci = Oci::default();
    let gz = gzip(&layer);
    let manifest = oci.manifest(&cfg, &[(gz.clone(), LAYER_GZ)]);
    let mut tampered = gz.clone();
    let n = tampered.len();
    tampered[n - 5] ^= 1; // the gzip trailer: decompression would notice too
    oci.blobs.insert(sha(&gz).hex().to_owned(), tampered);
    let desc = oci.descriptor(OCI_MANIFEST, &manifest);
    let e = store
        .load(
            &oci.archive(json!({"schemaVersion": 2, "manifests": [desc]}))[..],
            &Silent,
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::BlobDigest { .. }), "{e}");
    assert!(e.to_string().contains(sha(&gz).hex()), "{e}");
    assert_store_empty(&store);

    // Not an archive at all, and an index without linux/amd64.
    let e = store.load(&b"hello"[..], &Silent).unwrap_err();
    assert!(
        matches!(e, StoreError::Tar { .. } | StoreError::NotAnArchive),
        "{e}"
    );
    let mut oci = Oci::default();
    let manifest = oci.manifest(&cfg, &[(layer.clone(), LAYER_TAR)]);
    let mut d1 = oci.descriptor(OCI_MANIFEST, &manifest);
    d1["platform"] = json!({"architecture": "arm64", "os": "linux"});
    let mut d2 = d1.clone();
    d2["platform"] = json!({"architecture": "s390x", "os": "linux"});
    let e = store
        .load(
            &oci.archive(json!({"schemaVersion": 2, "manifests": [d1, d2]}))[..],
            &Silent,
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::NoPlatform(_)), "{e}");
    assert!(e.to_string().contains("linux/arm64"), "{e}");
    assert_store_empty(&store);

    // After all that, the good archive still loads.
    store.load(&good[..], &Silent).unwrap();
}

/// Random-looking content that does not compress (so sizes measure what they should).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn images_with_a_common_base_share_its_disk() {
    let s = Scratch::new("share");
    let store = s.store();
    let base = |seed: u64| {
        let mut l = Layer::new().dir("usr", 0o755).dir("usr/lib", 0o755);
        for i in 0..16u64 {
            l = l.file(
                &format!("usr/lib/lib{i}.so"),
                &noise(256 << 10, seed + i),
                0o755,
            );
        }
        l.tar()
    };
    let top = |name: &str| {
        Layer::new()
            .dir("app", 0o755)
            .file(&format!("app/{name}"), &noise(64 << 10, 99), 0o755)
            .tar()
    };
    let base_a = base(1);
    let (top_a, top_b) = (top("a"), top("b"));
    let cfg_a = config(&[&base_a, &top_a], json!({"Cmd": ["/app/a"]}));
    let cfg_b = config(&[&base_a, &top_b], json!({"Cmd": ["/app/b"]}));
    store
        .load(
            &docker_save(&cfg_a, &[base_a.clone(), top_a.clone()], &["a:1"], false)[..],
            &Silent,
        )
        .unwrap();
    let after_one = store.usage().disks;
    store
        .load(
            &docker_save(&cfg_b, &[gzip(&base_a), top_b.clone()], &["b:1"], false)[..],
            &Silent,
        )
        .unwrap();
    let shared = store.usage().disks;

    let s2 = Scratch::new("separate");
    let store2 = s2.store();
    let base_c = base(1000);
    let cfg_c = config(&[&base_c, &top_b], json!({}));
    store2
        .load(
            &docker_save(&cfg_a, &[base_a.clone(), top_a.clone()], &["a:1"], false)[..],
            &Silent,
        )
        .unwrap();
    store2
        .load(
            &docker_save(&cfg_c, &[base_c, top_b.clone()], &["c:1"], false)[..],
            &Silent,
        )
        .unwrap();
    let separate = store2.usage().disks;
    eprintln!(
        "disks: one image {after_one} B; two sharing a 4 MiB base {shared} B; two with separate bases {separate} B"
    );
    // The second image adds only its top layer's clusters.
    assert!(shared - after_one < 1 << 20, "{shared} - {after_one}");
    assert!(separate - shared > 3 << 20, "{separate} vs {shared}");

    // The chain reads back as one filesystem holding both layers; each layer file passes
    // qemu-img check.
    let b = store.resolve("b:1").unwrap();
    let raw = Raw::of(&store, &b, &s.0);
    raw.fsck_clean();
    assert!(raw.exists("/usr/lib/lib15.so"));
    assert!(raw.exists("/app/b") && !raw.exists("/app/a"));
    for e in fs::read_dir(store.root().join("disks")).unwrap().flatten() {
        qemu_img_ok(&["check", e.path().join("disk.qcow2").to_str().unwrap()]);
    }
    let top_disk = store.image_disk(&b, &Silent).unwrap();
    qemu_img_ok(&[
        "compare",
        "-F",
        "raw",
        top_disk.to_str().unwrap(),
        raw.0.to_str().unwrap(),
    ]);

    // Removing one image frees only what it alone used.
    let none = |_: &Digest| None;
    store.remove("a:1", false, &none).unwrap();
    assert!(store.usage().disks < shared && store.usage().disks > 3 << 20);
    assert_eq!(store.usage().disks, store.usage().disks);
    store.remove("b:1", false, &none).unwrap();
    assert_eq!(store.usage().disks, 0);
    assert_eq!(store.usage().layers, 0);
}

#[test]
fn import_makes_an_image_of_a_rootfs_tarball() {
    let s = Scratch::new("import");
    let store = s.store();
    let rootfs = tiny_rootfs();
    let opts = ImportOptions {
        reference: Some("imported".into()),
        changes: vec![
            "CMD [\"/bin/hello\"]".into(),
            "ENV A=1".into(),
            "WORKDIR /tmp".into(),
        ],
        message: Some("from a test".into()),
    };
    let img = store.import(&zstd(&rootfs)[..], &opts, &Silent).unwrap();
    assert_eq!(img.repo_tags, ["imported:latest"]);
    assert_eq!(img.layers, vec![sha(&rootfs)]);
    assert_eq!(img.config.cmd, Some(vec!["/bin/hello".to_string()]));
    assert_eq!(img.config.env, Some(vec!["A=1".to_string()]));
    assert_eq!(img.comment.as_deref(), Some("from a test"));
    assert_eq!(img.architecture.as_deref(), Some("amd64"));
    assert_eq!(store.resolve("imported").unwrap(), img.id);
    let raw = Raw::of(&store, &img.id, &s.0);
    raw.fsck_clean();
    assert!(raw.cat("/etc/passwd").starts_with("root:"));
    let e = store
        .import(
            &rootfs[..],
            &ImportOptions {
                changes: vec!["RUN x".into()],
                ..Default::default()
            },
            &Silent,
        )
        .unwrap_err();
    assert!(e.to_string().contains("RUN"), "{e}");
    // A rootfs whose entries escape is refused like a layer.
    let bad = Layer::new().raw_name(b"../x", b"x").tar();
    assert!(store
        .import(&bad[..], &ImportOptions::default(), &Silent)
        .is_err());
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn tags_and_removal_follow_docker() {
    let s = Scratch::new("rmi");
    let store = s.store();
    let layer = tiny_rootfs();
    let cfg = config(&[&layer], json!({}));
    let id = sha(&cfg);
    store
        .load(
            &docker_save(
                &cfg,
                std::slice::from_ref(&layer),
                &["busybox:latest"],
                false,
            )[..],
            &Silent,
        )
        .unwrap();
    store.tag("busybox", "busybox:1").unwrap();
    store.tag(&id.hex()[..8], "other/name:x").unwrap();
    assert!(store.tag("busybox", "Bad:Name").is_err());
    assert!(store.tag("nothing", "x").unwrap_err().is_not_found());
    let none = |_: &Digest| None;
    let stopped = |_: &Digest| {
        Some(ContainerUse {
            id: "c0ffee".repeat(8),
            running: false,
        })
    };
    let running = |_: &Digest| {
        Some(ContainerUse {
            id: "beef".repeat(16),
            running: true,
        })
    };

    // By ID with tags in two repositories: must be forced.
    let e = store.remove(id.short(), false, &none).unwrap_err();
    assert!(
        e.is_conflict() && e.to_string().contains("multiple repositories"),
        "{e}"
    );
    // By name with other tags left: untag only, even while a container runs it.
    assert_eq!(
        store.remove("busybox:1", false, &running).unwrap(),
        [Removed::Untagged("busybox:1".into())]
    );
    assert_eq!(
        store.remove("other/name:x", false, &none).unwrap(),
        [Removed::Untagged("other/name:x".into())]
    );
    // The last name of an image a container uses: must force.
    let e = store.remove("busybox", false, &stopped).unwrap_err();
    assert!(e.to_string().contains("must force"), "{e}");
    assert!(e.to_string().contains("c0ffeec0ffee"), "{e}");
    // By ID while a container runs it: cannot be forced.
    let e = store.remove(id.as_str(), true, &running).unwrap_err();
    assert!(e.to_string().contains("cannot be forced"), "{e}");
    // By ID with a stopped container: must be forced; forced, the image stays untagged
    // (its disks back that container).
    let e = store.remove(id.as_str(), false, &stopped).unwrap_err();
    assert!(e.to_string().contains("must be forced"), "{e}");
    assert_eq!(
        store.remove(id.as_str(), true, &stopped).unwrap(),
        [Removed::Untagged("busybox:latest".into())]
    );
    assert_eq!(store.list().unwrap()[0].repo_tags, Vec::<String>::new());
    assert!(store.usage().disks > 0);
    // Once unused, it goes with what it alone used.
    assert_eq!(
        store.remove(id.hex(), false, &none).unwrap(),
        [Removed::Deleted(id.clone())]
    );
    assert!(store.list().unwrap().is_empty());
    assert_eq!((store.usage().disks, store.usage().layers), (0, 0));

    // Loading a tag that names another image moves it.
    store
        .load(
            &docker_save(&cfg, std::slice::from_ref(&layer), &["x:1"], false)[..],
            &Silent,
        )
        .unwrap();
    let layer2 = Layer::new().file("f", b"2", 0o644).tar();
    let cfg2 = config(&[&layer2], json!({}));
    let loaded = store
        .load(&docker_save(&cfg2, &[layer2], &["x:1"], false)[..], &Silent)
        .unwrap();
    assert_eq!(loaded[0].moved, [("x:1".to_string(), id.clone())]);
    assert_eq!(store.list().unwrap().len(), 2);
    // By name, the last tag of an unused image deletes it.
    let r = store.remove("x:1", false, &none).unwrap();
    assert_eq!(
        r,
        [
            Removed::Untagged("x:1".into()),
            Removed::Deleted(sha(&cfg2))
        ]
    );
}

#[test]
fn save_then_load_gives_the_same_images() {
    let s = Scratch::new("save");
    let store = s.store();
    let (spec, spec_id) = spec_image();
    store.load(&spec[..], &Silent).unwrap();
    let layer = tiny_rootfs();
    let cfg = config(&[&layer], json!({}));
    store
        .load(
            &docker_save(&cfg, &[layer], &["tiny:1"], false)[..],
            &Silent,
        )
        .unwrap();
    let mut out = Vec::new();
    store
        .save(&["spec:test", &sha(&cfg).hex()[..6]], &mut out)
        .unwrap();

    let s2 = Scratch::new("save-load");
    let store2 = s2.store();
    let loaded = store2.load(&out[..], &Silent).unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[0].id, spec_id);
    assert_eq!(loaded[0].tags, ["spec:test"]);
    assert_eq!(loaded[1].id, sha(&cfg));
    assert!(loaded[1].tags.is_empty(), "saved by ID: no tag");
    check_spec_disk(&store2, &spec_id, &s2.0);

    // The same archive as an OCI layout (without manifest.json) loads too.
    let mut ar = tar::Archive::new(&out[..]);
    let mut members = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if name == "manifest.json" || name.ends_with('/') {
            continue;
        }
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        members.push((name, data));
    }
    let s3 = Scratch::new("save-oci");
    let store3 = s3.store();
    let loaded = store3.load(&archive(&members)[..], &Silent).unwrap();
    assert_eq!(loaded.len(), 2);
    assert!(loaded
        .iter()
        .any(|l| l.id == spec_id && l.tags == ["spec:test"]));
}

#[test]
fn directory_images_are_cached_until_they_change() {
    let s = Scratch::new("dir");
    let store = s.store();
    let root = s.0.join("rootfs");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/hostname"), "one\n").unwrap();
    let cached = |store: &ImageStore| -> Vec<PathBuf> {
        let mut v: Vec<_> = fs::read_dir(store.root().join("dirs"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "ext4"))
            .collect();
        v.sort();
        v
    };
    let d1 = store
        .directory_disk(&root, &s.0.join("vm1"), 64, &Silent)
        .unwrap();
    let first = cached(&store);
    assert_eq!(first.len(), 1);
    let d2 = store
        .directory_disk(&root, &s.0.join("vm2"), 64, &Silent)
        .unwrap();
    assert_eq!(cached(&store), first, "unchanged: not rebuilt");
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    assert_eq!(
        ino(&s.0.join("vm1/image.ext4")),
        ino(&first[0]),
        "hard link, no copy"
    );
    for d in [&d1, &d2] {
        qemu_img_ok(&["check", d.path.to_str().unwrap()]);
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(root.join("etc/hostname"), "two\n").unwrap();
    let d3 = store
        .directory_disk(&root, &s.0.join("vm3"), 64, &Silent)
        .unwrap();
    let second = cached(&store);
    assert_eq!(second.len(), 1, "the stale entry is dropped");
    assert_ne!(second, first);
    // The first container's disk still reads (it holds its own link to the old disk).
    let raw = s.0.join("vm1.raw");
    qemu_img_ok(&[
        "convert",
        "-O",
        "raw",
        d1.path.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    assert_eq!(
        qemu_harness::images::debugfs::request(&raw, "cat /etc/hostname").unwrap(),
        "one\n"
    );
    let raw3 = s.0.join("vm3.raw");
    qemu_img_ok(&[
        "convert",
        "-O",
        "raw",
        d3.path.to_str().unwrap(),
        raw3.to_str().unwrap(),
    ]);
    assert_eq!(
        qemu_harness::images::debugfs::request(&raw3, "cat /etc/hostname").unwrap(),
        "two\n"
    );
}

#[test]
fn concurrent_loads_of_images_sharing_a_base() {
    let s = Scratch::new("concurrent");
    let base = Layer::new()
        .dir("usr", 0o755)
        .file("usr/big", &noise(1 << 20, 5), 0o644)
        .tar();
    let mut archives = Vec::new();
    for i in 0..3 {
        let top = Layer::new().file(&format!("top{i}"), b"x", 0o644).tar();
        let cfg = config(&[&base, &top], json!({}));
        archives.push(docker_save(
            &cfg,
            &[base.clone(), top],
            &[&format!("img{i}:1")],
            false,
        ));
    }
    std::thread::scope(|sc| {
        for a in &archives {
            let store = s.store();
            sc.spawn(move || store.load(&a[..], &Silent).unwrap());
        }
    });
    let store = s.store();
    assert_eq!(store.list().unwrap().len(), 3);
    for i in 0..3 {
        let id = store.resolve(&format!("img{i}:1")).unwrap();
        let raw = Raw::of(&store, &id, &s.0);
        raw.fsck_clean();
        assert!(raw.exists(&format!("/top{i}")));
        assert!(raw.exists("/usr/big"));
    }
    assert!(fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn a_build_without_root_keeps_owners_devices_and_capabilities() {
    let s = Scratch::new("nobody");
    let (spec, id) = spec_image();
    if nix::unistd::geteuid().as_raw() != 0 {
        // Already unprivileged: the ordinary path is the non-root path.
        let store = s.store();
        store.load(&spec[..], &Silent).unwrap();
        check_spec_disk(&store, &id, &s.0);
        return;
    }
    let dir = s.0.join("store");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("spec.tar"), &spec).unwrap();
    let nobody = nix::unistd::Uid::from_raw(65534);
    let nogroup = nix::unistd::Gid::from_raw(65534);
    nix::unistd::chown(&dir, Some(nobody), Some(nogroup)).unwrap();
    nix::unistd::chown(&s.0, Some(nobody), Some(nogroup)).unwrap();
    // The load runs as nobody: `vch load` of this package, in a state directory nobody owns.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_vch"))
        .arg("--state")
        .arg(&dir)
        .arg("load")
        .arg("-i")
        .arg(dir.join("spec.tar"))
        .output()
        .expect("setpriv (util-linux)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Loaded image: spec:test\n"
    );
    let store = ImageStore::new(&dir);
    assert_eq!(store.resolve("spec:test").unwrap(), id);
    // Everything the store holds was made by nobody...
    use std::os::unix::fs::MetadataExt;
    let disks = dir.join("images/disks");
    for e in fs::read_dir(&disks).unwrap().flatten() {
        assert_eq!(
            fs::metadata(e.path().join("disk.qcow2")).unwrap().uid(),
            65534
        );
    }
    // ...and inside the image, owners, modes, devices and capabilities are as the layers say
    // (vch's store builds filesystems of the default size).
    check_spec_disk(&store, &id, &s.0);
}
