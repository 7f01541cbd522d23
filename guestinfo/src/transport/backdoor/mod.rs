//! The VMware backdoor transport (real vSphere): RPCI `info-get` / `info-set` for keys, and a
//! TCLO toolbox loop for host commands (guestinfo.md §2, tether-lifecycle.md §13).
//!
//! Layers, each testable on its own:
//! * [`port`]: the `in` / `rep outsb` / `rep insb` instructions behind the [`Port`] trait
//!   (real implementation: x86_64 inline assembly, only after CPUID says `VMwareVMware`);
//! * [`channel`]: the message protocol state machine (open, send, receive, close);
//! * [`vix`] and [`toolbox`]: the toolbox requests the VCH sends.

pub mod channel;
pub mod port;
pub mod toolbox;
pub mod vix;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use self::channel::rpci;
pub use self::channel::BackdoorError;
pub use self::port::{is_vmware, Port, Regs};
use self::toolbox::{Service, ToolboxState};
use super::{
    check_key, check_set_reply, check_writable, parse_get_reply, qualify, to_wire, HostCommand,
    Transport, TransportError,
};
use crate::Map;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The guest end on VMware: a [`Transport`] over RPCI plus a toolbox thread feeding
/// [`Transport::commands`].
pub struct Backdoor {
    port: Arc<dyn Port>,
    /// One RPCI exchange at a time: the VMX has few channels and the original is serial too.
    rpc: Mutex<()>,
    state: Arc<ToolboxState>,
    commands: Mutex<Option<Receiver<HostCommand>>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Backdoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backdoor")
            .field("port", &self.port)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Backdoor {
    /// Opens the backdoor after checking CPUID for `VMwareVMware`, and starts the toolbox
    /// thread. Fails with [`TransportError::NotVmware`] anywhere else (and on non-x86_64).
    pub fn open() -> Result<Backdoor, TransportError> {
        #[cfg(target_arch = "x86_64")]
        {
            let port = port::IoPort::new().ok_or(TransportError::NotVmware)?;
            Backdoor::with_port(Arc::new(port))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Err(TransportError::NotVmware)
        }
    }

    /// A backdoor over any [`Port`] (tests use a simulated VMX). Starts the toolbox thread.
    pub fn with_port(port: Arc<dyn Port>) -> Result<Backdoor, TransportError> {
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(ToolboxState::new(tx));
        let stop = Arc::new(AtomicBool::new(false));
        let mut service = Service::new(Arc::clone(&port), Arc::clone(&state));
        let thread_stop = Arc::clone(&stop);
        let handle = thread::Builder::new()
            .name("guestinfo-toolbox".to_owned())
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    // Sleep in short slices so that shutdown is prompt even at the 5 s delay.
                    let mut left = u64::from(service.delay) * 10;
                    while left > 0 && !thread_stop.load(Ordering::Relaxed) {
                        let slice = left.min(50);
                        thread::sleep(Duration::from_millis(slice));
                        left -= slice;
                    }
                    if thread_stop.load(Ordering::Relaxed) {
                        break;
                    }
                    service.step();
                    if service.delay == 0 {
                        // Yield a little even when busy, like the original's 10 ms timer.
                        thread::sleep(Duration::from_millis(1));
                    }
                }
                service.close();
            })?;
        Ok(Backdoor {
            port,
            rpc: Mutex::new(()),
            state,
            commands: Mutex::new(Some(rx)),
            stop,
            thread: Mutex::new(Some(handle)),
        })
    }

    /// Allows VIX users (the container id and the labels of `label` volumes). Like the
    /// original, users are only ever added.
    pub fn authorize_users<I: IntoIterator<Item = String>>(&self, users: I) {
        lock(&self.state.users).extend(users);
    }

    /// The address reported for `Set_Option broadcastIP 1`.
    pub fn set_primary_ip(&self, ip: Option<String>) {
        *lock(&self.state.primary_ip) = ip;
    }

    /// Stops the toolbox thread (also done on drop).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = lock(&self.thread).take() {
            let _ = handle.join();
        }
    }

    fn request(&self, msg: &str) -> Result<String, TransportError> {
        let _serial = lock(&self.rpc);
        let reply = rpci(&*self.port, msg.as_bytes())?;
        Ok(String::from_utf8_lossy(&reply).into_owned())
    }
}

impl Drop for Backdoor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Transport for Backdoor {
    fn get(&self, key: &str) -> Result<Option<String>, TransportError> {
        check_key(key)?;
        let reply = self.request(&format!("info-get {}", qualify(key)))?;
        parse_get_reply(&reply)
    }

    fn set(&self, key: &str, value: &str) -> Result<(), TransportError> {
        check_writable(key)?;
        let key = qualify(key);
        let reply = self.request(&format!("info-set {key} {}", to_wire(value)))?;
        check_set_reply(&key, &reply)
    }

    /// RPCI cannot list keys: walks the container schema, one `info-get` per key.
    fn get_all(&self) -> Result<Map, TransportError> {
        crate::discover_keys(&mut |key| self.get(key)).map_err(|e| match e {
            crate::DiscoverError::Get(e) => e,
            crate::DiscoverError::Decode(e) => TransportError::Protocol(e.to_string()),
        })
    }

    fn commands(&self) -> Option<Receiver<HostCommand>> {
        lock(&self.commands).take()
    }
}
