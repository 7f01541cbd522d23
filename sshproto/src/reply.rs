//! Answering the peer: the driver's wake-up, the slots replies we owe are put in, and the
//! [`Responder`] every request object carries. The lowest layer of the connection state:
//! it knows nothing of channels or requests.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the connection down with a second panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wakes the driver; shared by everything that gives it work.
#[derive(Debug, Default)]
pub(crate) struct DriverWake {
    waker: Mutex<Option<Waker>>,
    /// Some reply slot was filled.
    pub replies_dirty: AtomicBool,
}

impl DriverWake {
    pub fn register(&self, w: &Waker) {
        let mut g = lock(&self.waker);
        match &*g {
            Some(old) if old.will_wake(w) => {}
            _ => *g = Some(w.clone()),
        }
    }

    pub fn wake(&self) {
        let w = lock(&self.waker).take();
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// A reply we owe the peer, filled by whoever answers the request.
#[derive(Debug, Default)]
pub(crate) struct ReplySlot {
    value: Mutex<Option<(bool, Vec<u8>)>>,
}

impl ReplySlot {
    pub fn take(&self) -> Option<(bool, Vec<u8>)> {
        lock(&self.value).take()
    }

    pub fn is_filled(&self) -> bool {
        lock(&self.value).is_some()
    }
}

/// Answers one request exactly once; failure if dropped unanswered.
pub(crate) struct Responder {
    slot: Option<Arc<ReplySlot>>,
    wake: Arc<DriverWake>,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("pending", &self.slot.is_some())
            .finish()
    }
}

impl Responder {
    pub(crate) fn new(slot: Option<Arc<ReplySlot>>, wake: Arc<DriverWake>) -> Self {
        Self { slot, wake }
    }

    pub(crate) fn send(&mut self, ok: bool, data: Vec<u8>) {
        if let Some(slot) = self.slot.take() {
            *lock(&slot.value) = Some((ok, data));
            self.wake.replies_dirty.store(true, Ordering::Release);
            self.wake.wake();
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.send(false, Vec::new());
    }
}
