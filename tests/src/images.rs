//! Helpers of the image scenarios: image archives built here, offline (layers from Debian's
//! busybox-static, `docker save` archives, OCI image layouts) and the cached Debian root
//! filesystem tarballs of `scripts/debian-image`. The docker clients' scenario uses
//! [`crate::docker::Daemon`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use qemu_harness::images::Digest;
use serde_json::json;

use crate::Vch;

/// sha256 of some bytes, as `sha256:<hex>`.
pub fn sha(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

/// A layer tarball, entry by entry (root-owned, mode as given, a fixed mtime unless set).
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layer").finish_non_exhaustive()
    }
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: tar::EntryType, mode: u32, uid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    h
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    pub fn dir(self, path: &str, mode: u32) -> Layer {
        self.dir_owned(path, mode, 0)
    }

    pub fn dir_owned(mut self, path: &str, mode: u32, uid: u64) -> Layer {
        let mut h = header(tar::EntryType::Directory, mode, uid);
        self.b
            .append_data(&mut h, format!("{path}/"), &[][..])
            .expect("tar dir");
        self
    }

    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Layer {
        self.file_xattrs(path, data, mode, &[])
    }

    /// A root-owned file with extended attributes (PAX `SCHILY.xattr.*` records, as docker
    /// and containerd write them).
    pub fn file_xattrs(
        mut self,
        path: &str,
        data: &[u8],
        mode: u32,
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
                .expect("tar pax");
        }
        let mut h = header(tar::EntryType::Regular, mode, 0);
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path, data).expect("tar file");
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Layer {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        self.b
            .append_link(&mut h, path, target)
            .expect("tar symlink");
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Layer {
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        self.b
            .append_link(&mut h, path, target)
            .expect("tar hard link");
        self
    }

    /// An entry whose name is written as is (the tar crate refuses `..` in paths).
    pub fn raw_name(mut self, name: &[u8], data: &[u8]) -> Layer {
        let mut h = header(tar::EntryType::Regular, 0o644, 0);
        h.as_gnu_mut().expect("gnu header").name[..name.len()].copy_from_slice(name);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).expect("tar raw entry");
        self
    }

    pub fn tar(self) -> Vec<u8> {
        self.b.into_inner().expect("tar")
    }
}

/// Debian's busybox-static binary (scripts/setup installs it).
pub fn busybox_binary() -> Vec<u8> {
    std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)")
}

/// A root filesystem layer from Debian's busybox-static: the binary, a symlink per applet in
/// `/bin`, `root` and `user` (1000) in passwd and group, `/tmp` 1777, `/home/user` owned by
/// `user`.
pub fn busybox_layer() -> Layer {
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("/bin/busybox --list (apt-get install busybox-static)");
    let mut applets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|a| !a.is_empty() && *a != "busybox")
        .map(str::to_owned)
        .collect();
    applets.sort();
    let mut l = Layer::new()
        .dir("bin", 0o755)
        .file("bin/busybox", &busybox_binary(), 0o755);
    for a in &applets {
        l = l.symlink(&format!("bin/{a}"), "busybox");
    }
    l.dir("etc", 0o755)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
            0o644,
        )
        .file("etc/group", b"root:x:0:\nuser:x:1000:\n", 0o644)
        .dir("home", 0o755)
        .dir_owned("home/user", 0o755, 1000)
        .dir("proc", 0o755)
        .dir("root", 0o700)
        .dir("sys", 0o755)
        .dir("dev", 0o755)
        .dir("tmp", 0o1777)
}

/// gzip, as registries store layers.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// An image config for layers given uncompressed; `container` is its `config` section.
pub fn config(layers: &[&[u8]], container: serde_json::Value) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l).to_string()).collect();
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2025-01-02T03:04:05.000000006Z",
        "config": container,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2025-01-02T03:04:05Z", "created_by": "tether e2e"}],
    }))
    .expect("config JSON")
}

/// A tar archive of (name, bytes) members.
pub fn archive(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = header(tar::EntryType::Regular, 0o644, 0);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, &data[..]).expect("tar member");
    }
    b.into_inner().expect("tar")
}

/// A `docker save` archive of one image (docker 20.10's layout: `<id>/layer.tar`,
/// `<config digest>.json`, `manifest.json` last).
pub fn docker_save(cfg: &[u8], layers: &[Vec<u8>], tags: &[&str]) -> Vec<u8> {
    let cfg_name = format!("{}.json", sha(cfg).hex());
    let mut members = Vec::new();
    let mut names = Vec::new();
    for l in layers {
        let name = format!("{}/layer.tar", sha(l).hex());
        members.push((name.clone(), l.clone()));
        members.push((format!("{}/VERSION", sha(l).hex()), b"1.0".to_vec()));
        names.push(name);
    }
    members.push((cfg_name.clone(), cfg.to_vec()));
    let manifest = json!([{ "Config": cfg_name, "RepoTags": tags, "Layers": names }]);
    members.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).expect("manifest JSON"),
    ));
    archive(&members)
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// An OCI image layout under construction: blobs by digest.
#[derive(Debug, Default)]
pub struct Oci {
    pub blobs: BTreeMap<String, Vec<u8>>,
}

impl Oci {
    /// Stores a blob; its descriptor with a media type.
    pub fn descriptor(&mut self, media: &str, bytes: &[u8]) -> serde_json::Value {
        let d = sha(bytes);
        self.blobs.insert(d.hex().to_owned(), bytes.to_vec());
        json!({"mediaType": media, "digest": d.to_string(), "size": bytes.len()})
    }

    /// An image manifest: config plus layers (each as stored, with its media type).
    pub fn manifest(&mut self, cfg: &[u8], layers: &[(Vec<u8>, &str)]) -> Vec<u8> {
        let config = self.descriptor("application/vnd.oci.image.config.v1+json", cfg);
        let layers: Vec<_> = layers
            .iter()
            .map(|(l, media)| self.descriptor(media, l))
            .collect();
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": layers,
        }))
        .expect("manifest JSON")
    }

    /// The layout as a tar archive, with `index` as its `index.json`.
    pub fn archive(&self, index: serde_json::Value) -> Vec<u8> {
        let mut members: Vec<(String, Vec<u8>)> = vec![(
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        )];
        members.push((
            "index.json".into(),
            serde_json::to_vec(&index).expect("index JSON"),
        ));
        for (hex, b) in &self.blobs {
            members.push((format!("blobs/sha256/{hex}"), b.clone()));
        }
        archive(&members)
    }
}

/// A Debian bookworm minbase root filesystem tarball from `scripts/debian-image` (cached
/// outside the repository, keyed by its inputs; scripts/setup builds it, so this is a cache
/// hit), with `include` (comma-separated packages) added when not empty.
pub fn debian_tarball(include: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/debian-image");
    let out = Command::new(&script)
        .env("DEBIAN_INCLUDE", include)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/debian-image");
    assert!(
        out.status.success(),
        "scripts/debian-image failed (it needs mmdebstrap and Debian's archive the first time; scripts/setup builds it)"
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

impl Vch {
    /// Runs `vch ARGS` with a file on stdin (archives are too big to hold in memory twice);
    /// bounded by `limit`.
    pub fn cmd_with_file(
        &self,
        args: &[&str],
        stdin: &Path,
        limit: Duration,
    ) -> (i32, String, String) {
        let file = std::fs::File::open(stdin).expect("open stdin file");
        let child = Command::new(crate::vch_binary())
            .arg("--state")
            .arg(self.dir.path())
            .args(args)
            .stdin(file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run vch");
        let out = crate::wait_with_timeout(child, limit);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The image IDs of this state directory's store (`vch images -q --no-trunc`).
    pub fn image_ids(&self) -> Vec<String> {
        let (code, out, err) = self.cmd(&["images", "-q", "--no-trunc"]);
        assert_eq!(code, 0, "vch images: {err}");
        out.split_whitespace().map(str::to_owned).collect()
    }

    /// Entries of a directory of the image store (`ids`, `layers`, `disks`, `tmp`).
    pub fn store_entries(&self, part: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path().join("images").join(part))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}
