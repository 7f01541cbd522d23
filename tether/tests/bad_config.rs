//! Bad configuration, at volume, in process: over a thousand malformed container configs
//! (mutations of valid ones: missing keys, wrong types, absurd lengths, deep nesting,
//! duplicate case-insensitive keys, huge slices, and invalid UTF-8 on the wire) go through
//! the tether's config path, `tether::boot::load_config`, exactly as boot calls it, over the
//! real QEMU transport (a `QemuClient` talking frames to a `HostServer`). Each must end in a
//! clear error, written to the host as the container's `started` with status 125, and
//! nothing may panic. The VM scenario `bad_config_at_volume` boots a sample of the same
//! mutations.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a panic is its failure"
)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use guestinfo::malformed::{guest_view, mutations, Kind};
use guestinfo::store::{Store, StoreError};
use guestinfo::transport::frame::{encode_frame, FrameEvent, FrameReader, HEADER_LEN};
use guestinfo::transport::qemu::{HostServer, QemuClient};
use guestinfo::{ContainerConfig, Map};
use tether::boot::{load_config, MAX_STARTED};

/// A VMX stand-in that keeps whatever it is given, two spellings of one key included (a
/// real VMX cannot hold those, a broken writer on another host could send them).
#[derive(Debug, Default)]
struct RawStore {
    entries: Mutex<Map>,
}

impl RawStore {
    fn with(plain: &Map) -> RawStore {
        let wire = plain
            .iter()
            .map(|(k, v)| {
                let v = if v.is_empty() { "<nil>" } else { v.as_str() };
                (k.clone(), v.to_owned())
            })
            .collect();
        RawStore {
            entries: Mutex::new(wire),
        }
    }

    fn written(&self, key: &str) -> Option<String> {
        self.get(key).ok().flatten()
    }
}

impl Store for RawStore {
    fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let e = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(e.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone()))
    }

    fn set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let mut e = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        e.retain(|k, _| !k.eq_ignore_ascii_case(key));
        e.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    fn all(&self) -> Result<Map, StoreError> {
        Ok(self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone())
    }
}

/// A marker put into a key or value; on the wire it becomes bytes that are not UTF-8.
const MARKER: &str = "\u{1}BAD\u{1}";
const NOT_UTF8: &[u8] = b"\x01\xff\xfe\xc0\x01";

/// Rewrites every frame from host to guest that carries [`MARKER`] so that the marker's bytes
/// are not UTF-8, with the frame's checksums made valid again: the guest sees a well-formed
/// frame whose text does not decode.
fn poison_frames(mut from_host: UnixStream, mut to_guest: UnixStream) {
    let mut frames = FrameReader::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from_host.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        frames.push(&buf[..n]);
        while let Some(ev) = frames.next_event() {
            let FrameEvent::Message(msg) = ev else {
                continue;
            };
            let Ok(mut frame) = encode_frame(&msg) else {
                return;
            };
            let payload = &mut frame[HEADER_LEN..];
            let mut at = 0;
            while let Some(i) = payload[at..]
                .windows(MARKER.len())
                .position(|w| w == MARKER.as_bytes())
            {
                payload[at + i..at + i + MARKER.len()].copy_from_slice(NOT_UTF8);
                at += i + MARKER.len();
            }
            let crc = crc32fast::hash(&frame[HEADER_LEN..]);
            frame[8..12].copy_from_slice(&crc.to_le_bytes());
            let hcrc = crc32fast::hash(&frame[..12]);
            frame[12..16].copy_from_slice(&hcrc.to_le_bytes());
            if to_guest.write_all(&frame).is_err() {
                return;
            }
        }
    }
}

/// Runs the tether's config path against `store`; with `poison`, host frames carrying
/// [`MARKER`] reach the guest as invalid UTF-8.
fn through_the_tether(store: Arc<RawStore>, poison: bool) -> Result<ContainerConfig, String> {
    let server = HostServer::new(store);
    let (guest, host) = UnixStream::pair().expect("socket pair");
    let (guest_reader, guest_writer) = if poison {
        // guest → host directly; host → proxy → guest.
        let (proxy_in, host_out) = UnixStream::pair().expect("socket pair");
        let to_guest = host.try_clone().expect("clone");
        let host_reader = host.try_clone().expect("clone");
        let srv = server.clone();
        thread::spawn(move || {
            let _ = srv.serve(host_reader, host_out);
        });
        thread::spawn(move || poison_frames(proxy_in, to_guest));
        (guest.try_clone().expect("clone"), guest)
    } else {
        let srv = server.clone();
        thread::spawn(move || {
            let _ = srv.serve_stream(host);
        });
        (guest.try_clone().expect("clone"), guest)
    };
    let client =
        QemuClient::from_io(guest_reader, guest_writer).with_timeout(Duration::from_secs(20));
    load_config(&client)
        .map(|(_, cfg)| cfg)
        .map_err(|e| e.to_string())
}

/// The checks every failure must pass: a clear, bounded text naming what is wrong, written
/// back for the container's own session with status 125.
fn check_failure(
    what: &str,
    base_id: &str,
    store: &RawStore,
    result: Result<ContainerConfig, String>,
) {
    let msg = match result {
        Ok(_) => panic!("a malformed config was accepted: {what}"),
        Err(m) => m,
    };
    assert!(
        msg.starts_with("invalid container config: ")
            || msg.starts_with("cannot read the container config: "),
        "{what}: unclear error {msg:?}"
    );
    assert!(msg.len() <= MAX_STARTED, "{what}: {} bytes", msg.len());
    assert!(
        msg.contains("guestinfo.") || msg.starts_with("cannot read"),
        "{what}: the key at fault is not named: {msg:?}"
    );
    assert!(!msg.contains("schema error"), "{what}: {msg:?}");
    let started = store.written(&format!("guestinfo.vice..sessions|{base_id}.started"));
    assert_eq!(
        started.as_deref(),
        Some(msg.as_str()),
        "{what}: not written back"
    );
    let status = store.written(&format!("guestinfo.vice..sessions|{base_id}.status"));
    assert_eq!(status.as_deref(), Some("125"), "{what}");
}

fn fixture() -> Map {
    serde_json::from_str(include_str!("../../guestinfo/testdata/pl_container.json"))
        .expect("fixture")
}

/// A config like the one the harness writes for `vch run busybox sh -c ...`, with a volume.
fn harness_like() -> Map {
    let id = "badc0ffee0000000000000000000000000000000000000000000000000000002";
    let mut cfg = ContainerConfig::default();
    cfg.common.id = id.into();
    cfg.common.name = "volume_test".into();
    let mut s = guestinfo::SessionConfig::default();
    s.common.id = id.into();
    s.cmd.path = "/bin/sh".into();
    s.cmd.args = vec!["/bin/sh".into(), "-c".into(), "echo a | tr a b".into()];
    s.cmd.env = vec!["PATH=/bin:/usr/bin".into(), "HOME=/root".into()];
    s.cmd.dir = "/".into();
    s.attach = true;
    s.tty = true;
    cfg.sessions.insert(id.into(), s);
    let mut m = guestinfo::MountSpec::default();
    m.source.scheme = "label".into();
    m.source.path = "vol-data".into();
    m.path = "/data".into();
    m.mode = "rw".into();
    cfg.mounts.insert("vol-data".into(), m);
    cfg.annotations = BTreeMap::from([("owner".into(), "ops|dev".into())]);
    guestinfo::encode(&cfg).expect("encode")
}

fn primary_id(base: &Map) -> String {
    base["guestinfo.vice./common/id"].clone()
}

#[test]
fn the_valid_bases_load() {
    for base in [fixture(), harness_like()] {
        let store = Arc::new(RawStore::with(&base));
        let cfg = through_the_tether(store, false).expect("a valid config");
        assert_eq!(cfg.common.id, primary_id(&base));
    }
}

#[test]
fn a_thousand_malformed_configs_each_end_in_a_clear_error() {
    let started = Instant::now();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (base, seed, n) in [(fixture(), 1, 600), (harness_like(), 2, 420)] {
        let id = primary_id(&base);
        let ms = mutations(&base, seed, n).expect("a valid base");
        for m in &ms {
            *counts.entry(format!("{:?}", m.kind)).or_default() += 1;
        }
        // Two at a time: each case is independent (its own store, server and client).
        let (a, b) = ms.split_at(ms.len() / 2);
        thread::scope(|s| {
            for half in [a, b] {
                let id = &id;
                s.spawn(move || {
                    for m in half {
                        let store = Arc::new(RawStore::with(&m.map));
                        let r = through_the_tether(store.clone(), false);
                        check_failure(&m.what, id, &store, r);
                    }
                });
            }
        });
    }
    let mutated = started.elapsed();
    // Invalid UTF-8 on the wire: in a value, in a key, in the container ID itself.
    let base = guest_view(&fixture());
    let id = primary_id(&base);
    let keys: Vec<String> = base.keys().cloned().collect();
    for (i, key) in keys.iter().enumerate() {
        let mut map = base.clone();
        let what = if i % 2 == 0 {
            let v = map.get(key).cloned().unwrap_or_default();
            map.insert(key.clone(), format!("{v}{MARKER}"));
            format!("invalid UTF-8 in the value of {key}")
        } else {
            let v = map.get(key).cloned().unwrap_or_default();
            map.insert(format!("{key}{MARKER}"), v);
            format!("invalid UTF-8 in a key beside {key}")
        };
        let store = Arc::new(RawStore::with(&map));
        let r = through_the_tether(store.clone(), true);
        check_failure(&what, &id, &store, r);
        *counts.entry("InvalidUtf8".to_owned()).or_default() += 1;
    }
    let total: usize = counts.values().sum();
    eprintln!(
        "{total} malformed configs in {:?} (invalid UTF-8 from {mutated:?}): {counts:?}",
        started.elapsed()
    );
    assert!(total >= 1000, "{total}");
    for k in Kind::ALL {
        assert!(
            counts.get(&format!("{k:?}")).is_some_and(|n| *n >= 100),
            "{counts:?}"
        );
    }
}
