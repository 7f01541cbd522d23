//! The VCH's engine: every operation on containers, execs, volumes, networks and images, in
//! one place. `vch` and the Docker Engine API daemon are front ends over it: they parse a
//! request, call one of these methods and print the typed result in their own format; no
//! container operation is written twice.
//!
//! What the VCH can do (the methods of [`Engine`]):
//!
//! | operation | method | notes |
//! |---|---|---|
//! | create a container | [`Engine::create`] | VM folder, disk, config; nothing runs |
//! | run one in the foreground | [`Engine::run_foreground`] | create + keep in this process (`vch run`, tests, bench) |
//! | start | [`Engine::start`] | a `vch keeper` process keeps the VM; returns once the tether reported the launch |
//! | attach | [`Engine::attach`] | an [`Attachment`] to the primary session (before or after start) |
//! | wait | [`Engine::wait`] | `not-running`, `next-exit`, `removed` |
//! | stop / kill / restart | [`Engine::stop`], [`Engine::kill`], [`Engine::restart`] | |
//! | rename / remove | [`Engine::rename`], [`Engine::remove`] | |
//! | list / inspect | [`Engine::list`], [`Engine::inspect`] | typed [`ContainerView`] |
//! | logs | [`Engine::logs`] | lines, optionally followed |
//! | resize | [`Engine::resize`] | the primary session's terminal |
//! | exec | [`Engine::exec_create`], [`Engine::exec_start`], [`Engine::exec_inspect`], [`Engine::exec_resize`] | |
//! | volumes | [`Engine::volume_create`] … [`Engine::volume_prune`] | over [`crate::volume::VolumeStore`] |
//! | networks | [`Engine::network_create`] … [`Engine::network_prune`] | over [`crate::network::NetworkStore`] |
//! | connect / disconnect | [`Engine::network_connect`], [`Engine::network_disconnect`] | a running VM's NIC is hot-added / removed |
//! | images | [`Engine::images`], [`Engine::image`], [`Engine::image_load`], [`Engine::image_import`], [`Engine::image_tag`], [`Engine::image_remove`], [`Engine::image_save`], [`Engine::image_pull`] (the built-in busybox only) | over [`crate::images::ImageStore`]; `create` resolves names, IDs, prefixes and directories with [`Engine::image_resolve`] |
//! | events | [`Engine::events`] | create, start, die, destroy, … |
//! | copy files | [`Engine::archive_stat`], [`Engine::archive_get`], [`Engine::archive_put`], [`Engine::copy_from_container`], [`Engine::copy_to_container`] | tar streams over the tether's `archive-*@tether` channels; docker's client rules for `vch cp` |
//! | top / stats | [`Engine::top`], [`Engine::stats`] | read by the tether from the guest's `/proc` and `/sys` |
//!
//! Containers live in the state directory ([`crate::state`]) and are kept by `vch keeper`
//! processes, so they outlive the front end that started them; an engine opened later (a
//! restarted daemon) finds them there and serves them again.

mod attach;
mod connect;
mod containers;
mod error;
mod events;
mod exec;
mod images;
mod maintenance;
mod objects;
mod services;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use attach::{
    AttachOptions, Attachment, AttachmentControl, DetachKeys, Ended, PendingAttachment,
};
pub use connect::ConnectOptions;
pub use containers::{
    ContainerStatus, ContainerView, CreateRequest, CreateResponse, ListOptions, LogItem,
    LogOptions, RemoveOptions, WaitCondition,
};
pub use error::{EngineError, ErrorKind};
pub use events::{Event, EventKind};
pub use exec::{ExecCreate, ExecStamps, ExecView};
pub use images::{ImageDetail, ImageView};
pub use objects::{network_id, NetworkView, VolumeView};
pub use services::{chunk_stream, ArchiveOut, ChunkStream, LocalEnd, TopView};

use crate::state::State;

/// The engine over one state directory.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// The `vch` binary that keeps VMs (`vch keeper ID`).
    vch_exe: PathBuf,
    events: tokio::sync::broadcast::Sender<Event>,
    /// The latest events, for subscribers that ask for the past (`events --since`).
    history: Mutex<std::collections::VecDeque<Event>>,
    /// Execs created here, by ID (docker keeps them in the daemon's memory, too).
    execs: Mutex<HashMap<String, exec::ExecRecord>>,
    /// Per session ID: attachments waiting for the session to start, and live ones (for
    /// resizes that arrive on another request).
    attachments: Mutex<HashMap<String, attach::Registry>>,
    /// Containers whose keeper a task watches (for `die` events, `--rm` and waits).
    watched: Mutex<HashMap<String, u32>>,
}

impl Engine {
    /// An engine over `state`, starting keepers with `vch_exe`.
    pub fn new(state: State, vch_exe: PathBuf) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                state,
                vch_exe,
                events: tokio::sync::broadcast::channel(1024).0,
                history: Mutex::new(std::collections::VecDeque::new()),
                execs: Mutex::new(HashMap::new()),
                attachments: Mutex::new(HashMap::new()),
                watched: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The state directory.
    pub fn state(&self) -> &State {
        &self.inner.state
    }
}

/// Locks a mutex, taking the data of a poisoned one: every critical section here leaves its
/// map consistent, so a panic elsewhere must not take the engine down with it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Now, in ns since the epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
