//! Write-backs off the launch path.
//!
//! Every `set` of a guest key is a round trip to the host: the VMX on vSphere, the harness
//! (which persists its store on each write) under QEMU; several milliseconds each under TCG.
//! Nothing the tether does next depends on the host's answer, so [`WriteBack`] hands writes
//! to one thread that performs them in the order they were made: the host sees the same
//! writes in the same order as before, but a launch no longer waits for them, and the
//! entrypoint's first output is not held up behind them.
//!
//! The queue can be held ([`WriteBack::hold`]) while the entrypoint starts: the round trips,
//! though not waited for, still cost the one vCPU (and the host) time right when the
//! entrypoint needs it. Whoever needs the writes done (a flush, a read, [`WriteBack::written`])
//! releases it.
//!
//! Reads wait for the queue to drain first, so the tether never reads back a key older than
//! its own last write (a reload decodes the guest-writable keys too). Whoever ends the VM
//! calls [`WriteBack::flush`] (or drops the guard from [`WriteBack::flush_on_drop`]) so
//! that the last writes (exit status, the launch error) reach the host before power-off.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use guestinfo::transport::TransportError;
use guestinfo::{HostCommand, Map, Transport};

/// How long a read or the final flush waits for queued writes. Each write has the
/// transport's own timeout; this bounds the wait when the host stalls on many of them.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Work done on the write-back thread with the host transport itself.
type Deferred = Box<dyn FnOnce(&dyn Transport) + Send>;

enum Job {
    Set(String, String),
    /// Several writes in order, sent together (see [`Transport::set_many`]).
    SetMany(Vec<(String, String)>),
    Run(Deferred),
    Flush(mpsc::SyncSender<()>),
    Notify(tokio::sync::oneshot::Sender<()>),
}

impl Job {
    /// Whether the job is a write the pending count tracks.
    fn is_write(&self) -> bool {
        matches!(self, Job::Set(..) | Job::SetMany(_) | Job::Run(_))
    }
}

/// Does one job, on the write-back thread or inline.
fn perform(inner: &dyn Transport, job: Job) {
    match job {
        Job::Set(key, value) => {
            if let Err(e) = inner.set(&key, &value) {
                tracing::error!(key = %key, error = %e, "write-back failed");
            }
        }
        Job::SetMany(pairs) => {
            for (key, e) in inner.set_many(&pairs) {
                tracing::error!(key = %key, error = %e, "write-back failed");
            }
        }
        Job::Run(job) => job(inner),
        Job::Flush(done) => {
            let _ = done.send(());
        }
        Job::Notify(done) => {
            let _ = done.send(());
        }
    }
}

/// Whether the write-back thread may work; see [`WriteBack::hold`].
#[derive(Debug)]
struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
    /// The same state for async waiters.
    watch: tokio::sync::watch::Sender<bool>,
}

impl Gate {
    fn set(&self, open: bool) {
        *lock(&self.open) = open;
        self.changed.notify_all();
        self.watch.send_replace(open);
    }

    fn wait_open(&self) {
        let mut open = lock(&self.open);
        while !*open {
            open = self.changed.wait(open).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[derive(Debug)]
struct Shared {
    inner: Arc<dyn Transport>,
    gate: Arc<Gate>,
    /// `None` when the thread could not be started or has gone: jobs are then done inline.
    queue: Mutex<Option<Sender<Job>>>,
    /// The thread's end of the queue until the thread starts (see [`WriteBack::held`]).
    unstarted: Mutex<Option<Receiver<Job>>>,
    /// Writes queued and not yet performed: a read with nothing pending skips the flush.
    pending: Arc<AtomicUsize>,
    /// Every key written through [`WriteBack::set`] since the last
    /// [`WriteBack::take_written`], with its plain value: a reload tells the host's changes
    /// from the tether's own by it.
    written: Mutex<Map>,
}

/// A transport whose writes are performed, in order, by a thread of their own. Clones share
/// the queue.
#[derive(Debug, Clone)]
pub struct WriteBack {
    shared: Arc<Shared>,
}

impl WriteBack {
    /// Wraps `inner` and starts the write-back thread.
    pub fn start(inner: Arc<dyn Transport>) -> WriteBack {
        let wb = WriteBack::held(inner);
        wb.release();
        wb
    }

    /// Wraps `inner`, held (see [`hold`](Self::hold)): writes queue up, and the thread
    /// starts when they are let go. The boot holds them while the entrypoint starts; a
    /// thread started then (its first-time code under TCG, the scheduler's switches to it)
    /// would stand between the launch and the entrypoint's first output.
    pub fn held(inner: Arc<dyn Transport>) -> WriteBack {
        let (tx, rx) = mpsc::channel::<Job>();
        let gate = Arc::new(Gate {
            open: Mutex::new(false),
            changed: Condvar::new(),
            watch: tokio::sync::watch::channel(false).0,
        });
        WriteBack {
            shared: Arc::new(Shared {
                inner,
                gate,
                queue: Mutex::new(Some(tx)),
                unstarted: Mutex::new(Some(rx)),
                pending: Arc::new(AtomicUsize::new(0)),
                written: Mutex::new(Map::new()),
            }),
        }
    }

    /// Starts the thread unless it started already. Without one, what was queued is done
    /// here, in order, and every later job inline.
    fn start_worker(&self) {
        let Some(rx) = lock(&self.shared.unstarted).take() else {
            return;
        };
        // Handed over through a slot the caller keeps: a thread that cannot start drops its
        // closure, and the jobs in the queue must not go with it.
        let slot = Arc::new(Mutex::new(Some(rx)));
        let (inner, pending, gate) = (
            self.shared.inner.clone(),
            self.shared.pending.clone(),
            self.shared.gate.clone(),
        );
        let thread_slot = slot.clone();
        // The thread ends when the last handle is gone (the queue's sender is dropped).
        let spawned = std::thread::Builder::new()
            .name("write-back".into())
            .spawn(move || {
                if let Some(rx) = lock(&thread_slot).take() {
                    worker(&*inner, &rx, &pending, &gate);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no write-back thread; writing inline");
            *lock(&self.shared.queue) = None;
            if let Some(rx) = lock(&slot).take() {
                while let Ok(job) = rx.try_recv() {
                    let counted = job.is_write();
                    perform(&*self.shared.inner, job);
                    if counted {
                        self.shared.pending.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            }
        }
    }

    /// Holds queued writes back until [`release`](Self::release) (or until something waits
    /// for them): the tether's boot does this while the entrypoint starts.
    pub fn hold(&self) {
        self.shared.gate.set(false);
    }

    /// Lets the write-back thread work through the queue (starting it, the first time).
    pub fn release(&self) {
        self.shared.gate.set(true);
        self.start_worker();
    }

    /// Resolves once the queue is not held: for other deferrable work that should also stay
    /// out of the entrypoint's way.
    pub async fn released(&self) {
        let mut open = self.shared.gate.watch.subscribe();
        let _ = open.wait_for(|o| *o).await;
    }

    /// Queues `job`; without a thread (or if it is gone) does it here.
    fn submit(&self, job: Job) {
        let counted = job.is_write();
        let mut queue = lock(&self.shared.queue);
        let job = match queue.as_ref() {
            Some(q) => {
                if counted {
                    self.shared.pending.fetch_add(1, Ordering::AcqRel);
                }
                match q.send(job) {
                    Ok(()) => return,
                    Err(mpsc::SendError(job)) => {
                        // The thread is gone (it does not panic on purpose; PID 1 goes on).
                        if counted {
                            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
                        }
                        *queue = None;
                        job
                    }
                }
            }
            None => job,
        };
        drop(queue);
        perform(&*self.shared.inner, job);
    }

    /// Runs `job` on the write-back thread, after every write queued before it and before
    /// every later one, with the host transport itself: for a write-back whose encoding is
    /// work too, such as the initial one.
    pub fn defer(&self, job: impl FnOnce(&dyn Transport) + Send + 'static) {
        self.submit(Job::Run(Box::new(job)));
    }

    /// Waits until every write queued so far was performed (successfully or not), at most
    /// `timeout`. Returns whether the queue drained.
    pub fn flush(&self, timeout: Duration) -> bool {
        if self.shared.pending.load(Ordering::Acquire) == 0 {
            return true;
        }
        self.release();
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        self.submit(Job::Flush(done_tx));
        done_rx.recv_timeout(timeout).is_ok()
    }

    /// Resolves once every write queued so far was performed, without blocking the
    /// runtime: a session task awaits it where the host may act on what it wrote (a launch
    /// error before the attach channel closes, the exit status before it is sent), as the
    /// original's synchronous writes guaranteed.
    pub async fn written(&self) {
        if self.shared.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        self.release();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        self.submit(Job::Notify(done_tx));
        // An error means the thread is gone, and with it every pending write.
        let _ = done_rx.await;
    }

    /// A guard that flushes (bounded by [`FLUSH_TIMEOUT`]) when dropped: on every way out
    /// of boot, the host gets the last writes before the VM powers off.
    pub fn flush_on_drop(&self) -> FlushOnDrop {
        FlushOnDrop(self.clone())
    }

    /// The keys written through [`Transport::set`] since the last call, with their plain
    /// values (a later write of a key replaces an earlier one).
    pub fn take_written(&self) -> Map {
        std::mem::take(&mut *lock(&self.shared.written))
    }

    fn flush_before_read(&self) {
        if !self.flush(FLUSH_TIMEOUT) {
            tracing::warn!(
                "queued write-backs still pending after {FLUSH_TIMEOUT:?}; reading anyway"
            );
        }
    }
}

/// Writes `pairs` through `transport` in order, logging each key the host refused (`what`
/// names the write-back in the log). Read-only keys are skipped, as the original did.
pub fn write_keys<K, V>(
    transport: &dyn Transport,
    pairs: impl IntoIterator<Item = (K, V)>,
    what: &str,
) where
    K: AsRef<str>,
    V: AsRef<str>,
{
    for (key, error) in guestinfo::write_pairs(transport, pairs) {
        tracing::warn!(key = %key, error = %error, "{what} failed");
    }
}

/// See [`WriteBack::flush_on_drop`].
#[derive(Debug)]
pub struct FlushOnDrop(WriteBack);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        if !self.0.flush(FLUSH_TIMEOUT) {
            tracing::warn!("write-backs not done after {FLUSH_TIMEOUT:?}; powering off anyway");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a thread panicked holding it; the sender is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Nice value of the tether's own deferrable work (write-backs, key parsing).
const BACKGROUND_NICE: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority for work that can wait: with one vCPU,
/// a write-back or a key parse running at the entrypoint's priority takes half the CPU
/// from it, and from the threads forwarding its output, right when it starts. At nice 10
/// such a thread still gets about a tenth of a CPU that the container keeps busy, so it
/// finishes anyway.
pub fn background_priority() {
    if let Err(e) = crate::priority::set_thread_nice(BACKGROUND_NICE) {
        tracing::debug!(error = %e, "setpriority");
    }
}

fn worker(inner: &dyn Transport, rx: &Receiver<Job>, pending: &AtomicUsize, gate: &Gate) {
    background_priority();
    let mut next = None;
    while let Some(job) = next.take().or_else(|| rx.recv().ok()) {
        gate.wait_open();
        let (job, counted) = match job {
            Job::Set(k, v) => merge_writes(vec![(k, v)], rx, &mut next),
            Job::SetMany(pairs) => merge_writes(pairs, rx, &mut next),
            other => {
                let counted = usize::from(other.is_write());
                (other, counted)
            }
        };
        perform(inner, job);
        pending.fetch_sub(counted, Ordering::AcqRel);
    }
}

/// Adds the writes queued right behind `pairs` to them, in order, so that they go to the host
/// together (see [`Transport::set_many`]): an exec that ends before its start's write-back
/// was sent has both sent at once, the same keys in the same order. The first job that is not
/// a plain write is left in `next`. Returns the write job and how many queued jobs it stands
/// for.
fn merge_writes(
    mut pairs: Vec<(String, String)>,
    rx: &Receiver<Job>,
    next: &mut Option<Job>,
) -> (Job, usize) {
    let mut counted = 1;
    loop {
        match rx.try_recv() {
            Ok(Job::Set(k, v)) => pairs.push((k, v)),
            Ok(Job::SetMany(more)) => pairs.extend(more),
            Ok(other) => {
                *next = Some(other);
                break;
            }
            Err(_) => break,
        }
        counted += 1;
    }
    (Job::SetMany(pairs), counted)
}

impl Transport for WriteBack {
    fn get(&self, key: &str) -> Result<Option<String>, TransportError> {
        self.flush_before_read();
        self.shared.inner.get(key)
    }

    /// Queues the write and returns at once; a failure is logged by the write-back thread
    /// (the tether's callers only log it either way).
    fn set(&self, key: &str, value: &str) -> Result<(), TransportError> {
        lock(&self.shared.written).insert(key.to_owned(), value.to_owned());
        self.submit(Job::Set(key.to_owned(), value.to_owned()));
        Ok(())
    }

    /// Queued as one job: the write-back thread sends them together.
    fn set_many(&self, pairs: &[(String, String)]) -> Vec<(String, TransportError)> {
        {
            let mut written = lock(&self.shared.written);
            for (k, v) in pairs {
                written.insert(k.clone(), v.clone());
            }
        }
        self.submit(Job::SetMany(pairs.to_vec()));
        Vec::new()
    }

    fn get_all(&self) -> Result<Map, TransportError> {
        self.flush_before_read();
        self.shared.inner.get_all()
    }

    fn commands(&self) -> Option<Receiver<HostCommand>> {
        self.shared.inner.commands()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records writes; each one takes a while, like a host round trip, and none happens
    /// while a test holds `gate` (a host that does not answer).
    #[derive(Debug, Default)]
    struct Slow {
        log: Mutex<Vec<(String, String)>>,
        gate: Mutex<()>,
    }

    impl Transport for Slow {
        fn get(&self, key: &str) -> Result<Option<String>, TransportError> {
            Ok(lock(&self.log)
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone()))
        }
        fn set(&self, key: &str, value: &str) -> Result<(), TransportError> {
            drop(lock(&self.gate));
            std::thread::sleep(Duration::from_millis(20));
            if key == "bad" {
                return Err(TransportError::Closed);
            }
            lock(&self.log).push((key.into(), value.into()));
            Ok(())
        }
        fn get_all(&self) -> Result<Map, TransportError> {
            Ok(lock(&self.log).iter().cloned().collect())
        }
        fn commands(&self) -> Option<Receiver<HostCommand>> {
            None
        }
    }

    #[test]
    fn writes_do_not_wait_and_keep_their_order() {
        let slow = Arc::new(Slow::default());
        let wb = WriteBack::start(slow.clone());
        // The host answers nothing until the gate opens: a `set` that waited for it could not
        // return at all (no real-time window to miss on a slow machine).
        let host_stalled = lock(&slow.gate);
        let (done, returned) = std::sync::mpsc::channel();
        let writer = wb.clone();
        std::thread::spawn(move || {
            for i in 0..5 {
                writer.set(&format!("k{i}"), "v").unwrap();
            }
            writer.set("bad", "x").unwrap();
            writer.defer(|t| t.set("deferred", "d").unwrap());
            writer.set("k0", "last").unwrap();
            let _ = done.send(());
        });
        assert!(
            returned.recv_timeout(Duration::from_secs(30)).is_ok(),
            "set waited for the host"
        );
        assert!(lock(&slow.log).is_empty(), "written while the host stalled");
        drop(host_stalled);
        // A read sees every earlier write.
        assert_eq!(wb.get("k0").unwrap().as_deref(), Some("last"));
        let keys: Vec<String> = lock(&slow.log).iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4", "deferred", "k0"]);
        assert!(wb.flush(Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn written_waits_for_earlier_writes() {
        let slow = Arc::new(Slow::default());
        let wb = WriteBack::start(slow.clone());
        wb.set("a", "1").unwrap();
        wb.set("b", "2").unwrap();
        wb.written().await;
        assert_eq!(lock(&slow.log).len(), 2);
        // Nothing pending: returns at once.
        wb.written().await;
    }

    #[tokio::test]
    async fn held_writes_wait_for_a_release_or_a_waiter() {
        let slow = Arc::new(Slow::default());
        let wb = WriteBack::start(slow.clone());
        wb.hold();
        wb.set("a", "1").unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert!(lock(&slow.log).is_empty(), "written while held");
        let released = wb.clone();
        let waiter = tokio::spawn(async move { released.released().await });
        wb.release();
        waiter.await.unwrap();
        assert!(wb.flush(Duration::from_secs(1)));
        assert_eq!(lock(&slow.log).len(), 1);
        // Waiting for the writes releases the queue.
        wb.hold();
        wb.set("b", "2").unwrap();
        wb.written().await;
        assert_eq!(lock(&slow.log).len(), 2);
    }

    #[tokio::test]
    async fn a_held_queue_starts_its_thread_when_let_go() {
        let slow = Arc::new(Slow::default());
        let wb = WriteBack::held(slow.clone());
        wb.set("a", "1").unwrap();
        wb.defer(|t| t.set("b", "2").unwrap());
        std::thread::sleep(Duration::from_millis(60));
        assert!(lock(&slow.log).is_empty(), "written while held");
        assert!(
            lock(&wb.shared.unstarted).is_some(),
            "thread started while held"
        );
        wb.release();
        assert!(lock(&wb.shared.unstarted).is_none());
        wb.set("c", "3").unwrap();
        assert!(wb.flush(Duration::from_secs(1)));
        let keys: Vec<String> = lock(&slow.log).iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        // Let go again: the same thread goes on.
        wb.release();
        wb.set("d", "4").unwrap();
        wb.written().await;
        assert_eq!(lock(&slow.log).len(), 4);
    }

    /// Records how many keys each `set_many` carried.
    #[derive(Debug, Default)]
    struct Batches(Mutex<Vec<Vec<String>>>);

    impl Transport for Batches {
        fn get(&self, _: &str) -> Result<Option<String>, TransportError> {
            Ok(None)
        }
        fn set(&self, key: &str, _: &str) -> Result<(), TransportError> {
            lock(&self.0).push(vec![key.to_owned()]);
            Ok(())
        }
        fn set_many(&self, pairs: &[(String, String)]) -> Vec<(String, TransportError)> {
            lock(&self.0).push(pairs.iter().map(|(k, _)| k.clone()).collect());
            Vec::new()
        }
        fn get_all(&self) -> Result<Map, TransportError> {
            Ok(Map::new())
        }
        fn commands(&self) -> Option<Receiver<HostCommand>> {
            None
        }
    }

    #[tokio::test]
    async fn writes_queued_together_go_together_in_order() {
        let t = Arc::new(Batches::default());
        let wb = WriteBack::start(t.clone());
        wb.hold();
        wb.set_many(&[("a".into(), "1".into()), ("b".into(), "2".into())]);
        wb.set("c", "3").unwrap();
        wb.set_many(&[("a".into(), "4".into())]);
        wb.defer(|t| t.set("d", "5").unwrap());
        wb.set("e", "6").unwrap();
        wb.written().await;
        assert_eq!(
            *lock(&t.0),
            [
                vec!["a".to_owned(), "b".into(), "c".into(), "a".into()],
                vec!["d".into()],
                vec!["e".into()],
            ]
        );
        assert_eq!(wb.shared.pending.load(Ordering::Acquire), 0);
    }

    #[test]
    fn the_guard_flushes() {
        let slow = Arc::new(Slow::default());
        let wb = WriteBack::start(slow.clone());
        {
            let _guard = wb.flush_on_drop();
            wb.set("a", "1").unwrap();
            wb.set("b", "2").unwrap();
        }
        assert_eq!(lock(&slow.log).len(), 2);
    }
}
