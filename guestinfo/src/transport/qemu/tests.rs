//! Client ↔ server over in-memory socket pairs, with fault injection in between.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::*;
use crate::store::{write_config, MemStore};
use crate::transport::frame::{encode_frame, FrameEvent, FrameReader, Message};
use crate::transport::{reload_config, Transport, TransportError};
use crate::ContainerConfig;

fn must<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e:?}"),
    }
}

fn pair() -> (UnixStream, UnixStream) {
    must(UnixStream::pair())
}

fn fixture_store() -> Arc<dyn Store> {
    let store = Arc::new(MemStore::new());
    let cfg = must(crate::decode(&crate::container_tests::fixture()));
    must(write_config(&*store, &cfg));
    store
}

fn spawn_server(server: &HostServer, stream: UnixStream) -> JoinHandle<()> {
    let server = server.clone();
    thread::spawn(move || {
        let _ = server.serve_stream(stream);
    })
}

fn client_on(stream: UnixStream) -> QemuClient {
    let reader = must(stream.try_clone());
    QemuClient::from_io(reader, stream).with_timeout(Duration::from_secs(5))
}

/// A client as the tether's boot opens the device: no reader thread until its host commands
/// are asked for; requests read their own answers.
fn inline_on(stream: UnixStream) -> QemuClient {
    let file = std::fs::File::from(std::os::fd::OwnedFd::from(stream));
    must(QemuClient::from_file(file)).with_timeout(Duration::from_secs(5))
}

/// How a test makes its client: each test below that takes one runs with both.
type Client = fn(UnixStream) -> QemuClient;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn get_set_get_all_and_wire_rules() {
    get_set_get_all_and_wire_rules_with(client_on);
}

#[test]
fn get_set_get_all_and_wire_rules_inline() {
    get_set_get_all_and_wire_rules_with(inline_on);
}

fn get_set_get_all_and_wire_rules_with(client_on: Client) {
    let server = HostServer::new(fixture_store());
    let sets = server.subscribe();
    let (g, h) = pair();
    let _srv = spawn_server(&server, h);
    let client = client_on(g);

    assert_eq!(
        must(client.get("vice./hostname")).as_deref(),
        Some("web"),
        "`guestinfo.` is prepended"
    );
    assert_eq!(
        must(client.get("guestinfo.vice./hostname")).as_deref(),
        Some("web")
    );
    assert_eq!(
        must(client.get("common/name")),
        None,
        "hidden keys are invisible"
    );
    assert_eq!(
        must(client.get("guestinfo.vice./common/ExecutionEnvironment")).as_deref(),
        Some(""),
        "<nil> reads as the empty string"
    );
    assert_eq!(must(client.get("guestinfo.vice./nope")), None);

    let started = format!("guestinfo.vice..sessions|{ID}.started");
    must(client.set(&started, "true"));
    must(client.set("guestinfo.vice..sessions|x.note", ""));
    let store = server.store();
    assert_eq!(must(store.get(&started)).as_deref(), Some("true"));
    assert_eq!(
        must(store.get("guestinfo.vice..sessions|x.note")).as_deref(),
        Some("<nil>")
    );
    assert_eq!(
        sets.recv_timeout(Duration::from_secs(5)).ok(),
        Some((started.clone(), "true".to_owned()))
    );
    assert_eq!(
        sets.recv_timeout(Duration::from_secs(5)).ok(),
        Some(("guestinfo.vice..sessions|x.note".to_owned(), String::new()))
    );

    assert!(matches!(
        client.set("guestinfo.vice./hostname", "evil"),
        Err(TransportError::ReadOnlyKey(_))
    ));
    assert!(matches!(
        client.set("guestinfo.vice..a b", "x"),
        Err(TransportError::InvalidKey(_))
    ));

    let all = must(client.get_all());
    assert!(all.keys().all(|k| k.starts_with("guestinfo.")));
    assert!(!all.contains_key("common/name"));
    assert_eq!(
        all.get("guestinfo.vice./common/ExecutionEnvironment")
            .map(String::as_str),
        Some("")
    );
    let mut cfg = ContainerConfig::default();
    must(reload_config(&client, &mut cfg));
    assert_eq!(cfg.common.id, ID);
    assert_eq!(
        cfg.sessions[ID].started, "",
        "reload_config has the tether's semantics"
    );
    assert_eq!(cfg.sessions[ID].cmd.path, "/bin/sh");
}

#[test]
fn the_host_refuses_like_the_vmx() {
    let server = HostServer::new(Arc::new(MemStore::new()));
    let cases = [
        ("info-set guestinfo.vice./ro x", "0 "),
        ("info-set hidden x", "0 "),
        ("info-set guestinfo.novalue", "0 "),
        ("bogus", "0 "),
        ("info-set guestinfo.vice..rw has spaces", "1 "),
        ("info-get guestinfo.vice..rw", "1 has spaces"),
    ];
    for (command, want) in cases {
        let Message::Reply { reply, .. } = server.handle(1, command) else {
            panic!("no reply to {command}");
        };
        assert!(reply.starts_with(want), "{command}: {reply}");
    }
}

/// A config too large for one frame used to end the connection (the reply could not be
/// written), leaving the guest to time out without learning why; the host now refuses the
/// `info-get-all` and keeps serving, so the guest can still read single keys and report.
#[test]
fn a_config_too_large_for_a_frame_is_refused_and_the_connection_stays() {
    let store = fixture_store();
    must(store.set(
        "guestinfo.vice./common/notes",
        &"n".repeat(crate::transport::frame::MAX_PAYLOAD),
    ));
    let server = HostServer::new(store);
    let (g, h) = pair();
    let _srv = spawn_server(&server, h);
    let client = client_on(g);
    match client.get_all() {
        Err(TransportError::Protocol(why)) => {
            assert!(why.contains("exceeds the frame limit"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        must(client.get("guestinfo.vice./common/id")).as_deref(),
        Some(ID)
    );
    must(client.set("guestinfo.vice..sessions|x.started", "too big"));
}

#[test]
fn host_commands_are_pushed_and_queued() {
    host_commands_are_pushed_and_queued_with(client_on);
}

#[test]
fn host_commands_are_pushed_and_queued_inline() {
    host_commands_are_pushed_and_queued_with(inline_on);
}

fn host_commands_are_pushed_and_queued_with(client_on: Client) {
    let server = HostServer::new(Arc::new(MemStore::new()));
    must(server.push(HostCommand::Reload));
    let (g, h) = pair();
    let _srv = spawn_server(&server, h);
    let client = client_on(g);
    let commands: Receiver<HostCommand> = match client.commands() {
        Some(rx) => rx,
        None => panic!("no command receiver"),
    };
    assert!(client.commands().is_none());
    assert_eq!(
        commands.recv_timeout(Duration::from_secs(5)).ok(),
        Some(HostCommand::Reload),
        "queued before the guest connected"
    );
    // The guest is connected once it got a reply.
    must(client.get("guestinfo.x"));
    for cmd in [
        HostCommand::Kill("KILL".to_owned()),
        HostCommand::GroupKill("HUP".to_owned()),
        HostCommand::Halt,
    ] {
        must(server.push(cmd.clone()));
        assert_eq!(
            commands.recv_timeout(Duration::from_secs(5)).ok(),
            Some(cmd)
        );
    }
}

/// Forwards bytes from `from` to `to`, passing each chunk through `f`.
fn proxy(
    mut from: UnixStream,
    mut to: UnixStream,
    mut f: impl FnMut(&mut Vec<u8>) + Send + 'static,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut chunk = buf[..n].to_vec();
            f(&mut chunk);
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    })
}

/// client ⇄ proxy ⇄ server, with `up` applied guest→host and `down` host→guest.
fn proxied(
    client_on: Client,
    server: &HostServer,
    up: impl FnMut(&mut Vec<u8>) + Send + 'static,
    down: impl FnMut(&mut Vec<u8>) + Send + 'static,
) -> QemuClient {
    let (g, pg) = pair();
    let (ph, h) = pair();
    let _srv = spawn_server(server, h);
    proxy(must(pg.try_clone()), must(ph.try_clone()), up);
    proxy(ph, pg, down);
    client_on(g)
}

fn corrupt_first(mut done: bool) -> impl FnMut(&mut Vec<u8>) + Send + 'static {
    move |chunk: &mut Vec<u8>| {
        if !done && chunk.len() > 20 {
            chunk[20] ^= 0x55;
            done = true;
        }
    }
}

#[test]
fn corrupt_request_is_answered_with_an_error_and_retried() {
    corrupt_request_is_answered_with_an_error_and_retried_with(client_on);
}

#[test]
fn corrupt_request_is_answered_with_an_error_and_retried_inline() {
    corrupt_request_is_answered_with_an_error_and_retried_with(inline_on);
}

fn corrupt_request_is_answered_with_an_error_and_retried_with(client_on: Client) {
    let server = HostServer::new(fixture_store());
    let client = proxied(client_on, &server, corrupt_first(false), |_| {});
    assert_eq!(
        must(client.get("guestinfo.vice./hostname")).as_deref(),
        Some("web")
    );
    assert_eq!(server.damaged_frames(), 1);
    assert_eq!(
        must(client.get("guestinfo.vice./domainname")).as_deref(),
        Some("example.com")
    );
}

#[test]
fn corrupt_reply_is_reported_and_retried() {
    corrupt_reply_is_reported_and_retried_with(client_on);
}

#[test]
fn corrupt_reply_is_reported_and_retried_inline() {
    corrupt_reply_is_reported_and_retried_with(inline_on);
}

fn corrupt_reply_is_reported_and_retried_with(client_on: Client) {
    let server = HostServer::new(fixture_store());
    let client = proxied(client_on, &server, |_| {}, corrupt_first(false));
    assert_eq!(
        must(client.get("guestinfo.vice./hostname")).as_deref(),
        Some("web")
    );
    assert_eq!(
        must(client.get("guestinfo.vice./domainname")).as_deref(),
        Some("example.com")
    );
}

#[test]
fn persistent_corruption_gives_up() {
    persistent_corruption_gives_up_with(client_on);
}

#[test]
fn persistent_corruption_gives_up_inline() {
    persistent_corruption_gives_up_with(inline_on);
}

fn persistent_corruption_gives_up_with(client_on: Client) {
    let server = HostServer::new(fixture_store());
    let client = proxied(
        client_on,
        &server,
        |chunk: &mut Vec<u8>| {
            if let Some(b) = chunk.get_mut(20) {
                *b ^= 0x55;
            }
        },
        |_| {},
    );
    assert!(matches!(
        client.get("guestinfo.vice./hostname"),
        Err(TransportError::Corrupt)
    ));
}

/// A hand-driven host end: reads frames from the guest.
struct RawHost {
    stream: UnixStream,
    frames: FrameReader,
}

impl RawHost {
    fn next(&mut self) -> FrameEvent {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(ev) = self.frames.next_event() {
                return ev;
            }
            let n = must(self.stream.read(&mut buf));
            assert!(n > 0, "guest closed");
            self.frames.push(&buf[..n]);
        }
    }

    fn request(&mut self) -> (u64, String) {
        match self.next() {
            FrameEvent::Message(Message::Request { id, command }) => (id, command),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn send(&mut self, msg: &Message) {
        must(self.stream.write_all(&must(encode_frame(msg))));
    }
}

#[test]
fn truncated_frame_from_guest_is_dropped_and_the_stream_recovers() {
    let server = HostServer::new(fixture_store());
    let (g, h) = pair();
    let _srv = spawn_server(&server, h);
    let mut raw = RawHost {
        stream: g,
        frames: FrameReader::new(),
    };
    let whole = must(encode_frame(&Message::Request {
        id: 7,
        command: "info-get guestinfo.vice./hostname".to_owned(),
    }));
    // The guest died mid-frame, came back and sent a new request.
    must(raw.stream.write_all(&whole[..whole.len() / 2]));
    must(raw.stream.write_all(&whole));
    let mut saw_error = false;
    loop {
        match raw.next() {
            FrameEvent::Message(Message::Error { id: None, .. }) => saw_error = true,
            FrameEvent::Message(Message::Reply { id: 7, reply, .. }) => {
                assert_eq!(reply, "1 web");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_error);
    assert_eq!(server.damaged_frames(), 1);
}

#[test]
fn requests_time_out_and_late_replies_are_discarded() {
    requests_time_out_and_late_replies_are_discarded_with(client_on);
}

#[test]
fn requests_time_out_and_late_replies_are_discarded_inline() {
    requests_time_out_and_late_replies_are_discarded_with(inline_on);
}

fn requests_time_out_and_late_replies_are_discarded_with(client_on: Client) {
    let (g, h) = pair();
    let client = client_on(g).with_timeout(Duration::from_millis(300));
    let mut host = RawHost {
        stream: h,
        frames: FrameReader::new(),
    };
    let start = Instant::now();
    let err = client.get("guestinfo.a");
    assert!(matches!(err, Err(TransportError::Timeout(_))), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    let (late_id, _) = host.request();

    let waiter = thread::spawn(move || client.get("guestinfo.b").map(|v| (v, client)));
    let (id, command) = host.request();
    assert_eq!(command, "info-get guestinfo.b");
    // The stale reply first, then the real one.
    host.send(&Message::Reply {
        id: late_id,
        reply: "1 stale".to_owned(),
        entries: Vec::new(),
    });
    host.send(&Message::Reply {
        id,
        reply: "1 fresh".to_owned(),
        entries: Vec::new(),
    });
    let (value, client) = match waiter.join() {
        Ok(r) => must(r),
        Err(_) => panic!("waiter panicked"),
    };
    assert_eq!(value.as_deref(), Some("fresh"));
    drop(host);
    assert!(matches!(
        client.get("guestinfo.c"),
        Err(TransportError::Closed)
    ));
}

#[test]
fn serving_survives_a_guest_reconnect() {
    let server = HostServer::new(fixture_store());
    let (g1, h1) = pair();
    let srv1 = spawn_server(&server, h1);
    let g1_handle = must(g1.try_clone());
    let c1 = client_on(g1);
    must(c1.set("guestinfo.vice..tether.bootstamps|kernel", "1200"));
    // The guest goes away (reboot): its end of the channel closes.
    must(g1_handle.shutdown(std::net::Shutdown::Both));
    drop(c1);
    let _ = srv1.join();
    assert!(!server.is_connected());

    let (g2, h2) = pair();
    let _srv2 = spawn_server(&server, h2);
    let c2 = client_on(g2);
    assert_eq!(
        must(c2.get("guestinfo.vice..tether.bootstamps|kernel")).as_deref(),
        Some("1200")
    );
    let commands = c2.commands();
    must(server.push(HostCommand::Halt));
    assert_eq!(
        commands.and_then(|rx| rx.recv_timeout(Duration::from_secs(5)).ok()),
        Some(HostCommand::Halt)
    );
}

#[test]
fn writeback_through_the_transport() {
    let server = HostServer::new(fixture_store());
    let sets = server.subscribe();
    let (g, h) = pair();
    let _srv = spawn_server(&server, h);
    let client = client_on(g);
    let mut cfg = ContainerConfig::default();
    must(reload_config(&client, &mut cfg));
    if let Some(s) = cfg.sessions.get_mut(ID) {
        s.started = "true".to_owned();
        s.detail.start_time = 1_700_000_000;
    }
    let pairs = must(crate::session_writeback(&cfg, ID));
    let failed = crate::transport::write_pairs(&client, pairs.iter().map(|(k, v)| (k, v)));
    assert!(failed.is_empty(), "{failed:?}");
    let seen: Vec<(String, String)> = (0..pairs.len())
        .filter_map(|_| sets.recv_timeout(Duration::from_secs(5)).ok())
        .collect();
    assert_eq!(seen, pairs);
    let host_view = must(crate::store::read_config(&**server.store()));
    assert_eq!(host_view.sessions[ID].started, "true");
    assert_eq!(host_view.sessions[ID].detail.start_time, 1_700_000_000);
}

/// Reads like a virtio-serial port: end-of-file while "the host is not connected".
struct Flaky {
    inner: UnixStream,
    connected: Arc<std::sync::atomic::AtomicBool>,
}

impl Read for Flaky {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.connected.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(0);
        }
        self.inner.read(buf)
    }
}

#[test]
fn device_mode_survives_a_disconnected_host() {
    let (g, h) = pair();
    let connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = Flaky {
        inner: must(g.try_clone()),
        connected: Arc::clone(&connected),
    };
    let client = QemuClient::spawn(reader, g, true).with_timeout(Duration::from_secs(5));
    // Nobody home: requests fail fast instead of waiting for the timeout.
    let start = Instant::now();
    assert!(matches!(
        client.get("guestinfo.vice./hostname"),
        Err(TransportError::Closed)
    ));
    assert!(start.elapsed() < Duration::from_secs(2));
    // The host comes up; the same client works (the unanswered request above is discarded).
    let server = HostServer::new(fixture_store());
    let _srv = spawn_server(&server, h);
    connected.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        must(client.get("guestinfo.vice./hostname")).as_deref(),
        Some("web")
    );
}

#[test]
fn set_many_sends_them_together_in_order() {
    set_many_sends_them_together_in_order_with(client_on);
}

#[test]
fn set_many_sends_them_together_in_order_inline() {
    set_many_sends_them_together_in_order_with(inline_on);
}

fn set_many_sends_them_together_in_order_with(client_on: Client) {
    let server = HostServer::new(Arc::new(MemStore::new()));
    let sets = server.subscribe();
    let (g, h) = pair();
    let _srv = spawn_server(&server, h);
    let client = client_on(g);
    let pairs: Vec<(String, String)> = (0..5)
        .map(|i| (format!("guestinfo.vice..k{i}"), format!("v{i}")))
        .chain([("guestinfo.vice..k0".to_owned(), String::new())])
        .chain([("guestinfo.vice./ro".to_owned(), "x".to_owned())])
        .collect();
    let failed = client.set_many(&pairs);
    // The read-only key is refused (by the client, as `set` refuses it); the rest arrive.
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "guestinfo.vice./ro");
    let seen: Vec<(String, String)> = (0..6).map(|_| must(sets.recv())).collect();
    let want: Vec<(String, String)> = (0..5)
        .map(|i| (format!("guestinfo.vice..k{i}"), format!("v{i}")))
        .chain([("guestinfo.vice..k0".to_owned(), String::new())])
        .collect();
    assert_eq!(seen, want, "in order, the later write of k0 last");
    assert_eq!(must(client.get("guestinfo.vice..k0")).as_deref(), Some(""));
    assert_eq!(
        must(client.get("guestinfo.vice..k4")).as_deref(),
        Some("v4")
    );
}

/// Counts the writes of the store (each is one rewrite and fsync of a [`crate::store::FileStore`]).
#[derive(Debug, Default)]
struct CountingStore {
    inner: MemStore,
    writes: std::sync::atomic::AtomicUsize,
}

impl Store for CountingStore {
    fn get(&self, key: &str) -> Result<Option<String>, crate::store::StoreError> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &str) -> Result<(), crate::store::StoreError> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.set(key, value)
    }
    fn set_all(&self, entries: &[(String, String)]) -> Result<(), crate::store::StoreError> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.set_all(entries)
    }
    fn all(&self) -> Result<Map, crate::store::StoreError> {
        self.inner.all()
    }
}

#[test]
fn pipelined_sets_are_stored_together_and_answered_each() {
    pipelined_sets_are_stored_together_and_answered_each_with(client_on);
}

#[test]
fn pipelined_sets_are_stored_together_and_answered_each_inline() {
    pipelined_sets_are_stored_together_and_answered_each_with(inline_on);
}

fn pipelined_sets_are_stored_together_and_answered_each_with(client_on: Client) {
    let store = Arc::new(CountingStore::default());
    let server = HostServer::new(store.clone());
    let sets = server.subscribe();
    let (g, h) = pair();
    let _srv = spawn_server(&server, h);
    let client = client_on(g);
    let pairs: Vec<(String, String)> = (0..8)
        .map(|i| (format!("guestinfo.vice..k{i}"), format!("v{i}")))
        .collect();
    assert!(client.set_many(&pairs).is_empty());
    let seen: Vec<(String, String)> = (0..8).map(|_| must(sets.recv())).collect();
    assert_eq!(seen, pairs, "every write seen, in order");
    // One write of the guest's reaches the host in one read (a socket pair here): one store
    // write for the eight keys.
    assert_eq!(store.writes.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        must(client.get("guestinfo.vice..k7")).as_deref(),
        Some("v7")
    );
    // A refused key among them is refused alone, as before.
    let mut raw = must(UnixStream::pair());
    let _srv2 = spawn_server(&server, raw.1);
    let mut out = Vec::new();
    for (id, command) in [
        (1, "info-set guestinfo.vice..a 1"),
        (2, "info-set guestinfo.vice./ro 2"),
        (3, "info-set guestinfo.vice..b 3"),
    ] {
        out.extend(must(encode_frame(&Message::Request {
            id,
            command: command.into(),
        })));
    }
    must(raw.0.write_all(&out));
    let mut frames = FrameReader::new();
    let mut replies = Vec::new();
    let mut buf = [0u8; 4096];
    while replies.len() < 3 {
        let n = must(raw.0.read(&mut buf));
        assert!(n > 0, "closed");
        frames.push(&buf[..n]);
        while let Some(FrameEvent::Message(Message::Reply { id, reply, .. })) = frames.next_event()
        {
            replies.push((id, reply));
        }
    }
    assert_eq!(
        replies,
        [
            (1, "1 ".to_owned()),
            (2, "0 Read-only key".to_owned()),
            (3, "1 ".to_owned())
        ]
    );
    assert_eq!(store.writes.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn an_inline_client_reads_for_its_requests_until_commands_are_asked_for() {
    let server = HostServer::new(fixture_store());
    must(server.push(HostCommand::Reload));
    let (g, h) = pair();
    let _srv = spawn_server(&server, h);
    let client = inline_on(g);
    assert_eq!(
        must(client.get("guestinfo.vice./hostname")).as_deref(),
        Some("web")
    );
    assert!(must(client.get_all()).contains_key("guestinfo.vice./common/id"));
    assert!(lock(&client.inline).is_some(), "a thread took the channel");
    let Some(commands) = client.commands() else {
        panic!("no command receiver");
    };
    // The push queued before the guest connected came in front of the first reply, and the
    // request that read it passed it on.
    assert_eq!(commands.try_recv().ok(), Some(HostCommand::Reload));
    // From now on a thread reads: a push with no request in flight arrives.
    must(server.push(HostCommand::Halt));
    assert_eq!(
        commands.recv_timeout(Duration::from_secs(5)).ok(),
        Some(HostCommand::Halt)
    );
    assert!(lock(&client.inline).is_none());
    assert_eq!(
        must(client.get("guestinfo.vice./domainname")).as_deref(),
        Some("example.com")
    );
}

#[test]
fn an_inline_client_fails_fast_while_the_host_is_away() {
    let (g, h) = pair();
    // The device reads end-of-file while nothing is connected on the host side; a socket
    // whose peer shut its writing half down does the same.
    must(h.shutdown(std::net::Shutdown::Write));
    let client = inline_on(g);
    let start = Instant::now();
    assert!(matches!(
        client.get("guestinfo.vice./hostname"),
        Err(TransportError::Closed)
    ));
    assert!(start.elapsed() < Duration::from_secs(2));
}
