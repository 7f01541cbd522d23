//! Logging to the debug channel.
//!
//! Early in boot only the console exists; once the kernel modules are loaded the tether moves
//! its log to the debug channel (a virtio-serial port under QEMU, `/dev/ttyS1` on vSphere). The
//! destination is a process-wide slot so the switch needs no re-initialisation of `tracing`.
//!
//! Level policy: `error` = the user's action failed (a launch, a mount, a write-back);
//! `warn` = abnormal but harmless; `info` = rare state changes (boot phases, session start and
//! exit, power-off); `debug`/`trace` = developer detail.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tracing_subscriber::fmt::MakeWriter;

static SINK: OnceLock<Mutex<Option<File>>> = OnceLock::new();
/// Most verbose level logged: 1 = error ... 5 = trace. Changes at runtime with the config.
static LEVEL: AtomicU8 = AtomicU8::new(3);

fn rank(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 1,
        tracing::Level::WARN => 2,
        tracing::Level::INFO => 3,
        tracing::Level::DEBUG => 4,
        tracing::Level::TRACE => 5,
    }
}

/// Changes the most verbose level logged.
pub fn set_level(level: tracing::Level) {
    LEVEL.store(rank(&level), Ordering::Relaxed);
}

fn sink() -> MutexGuard<'static, Option<File>> {
    let m = SINK.get_or_init(|| Mutex::new(None));
    // A poisoned lock only means a writer panicked mid-line; the file is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends all further log lines to `file`.
pub fn set_destination(file: File) {
    *sink() = Some(file);
}

/// Writes raw bytes to the log destination (used by the panic hook, which must not depend
/// on `tracing` being healthy).
pub fn write_raw(bytes: &[u8]) {
    if let Some(f) = sink().as_mut() {
        let _ = f.write_all(bytes);
    }
}

#[derive(Debug, Clone, Copy)]
struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match sink().as_mut() {
            Some(f) => {
                // A log line must never block or fail PID 1's work: errors are dropped.
                let _ = f.write_all(buf);
                Ok(buf.len())
            }
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Sink;
    fn make_writer(&'a self) -> Self::Writer {
        Sink
    }
}

/// Installs the global subscriber. The timestamp is time since boot, which is what matters
/// when reading a boot log.
pub fn init(level: tracing::Level) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    if let Ok(console) = File::options().write(true).open("/dev/console") {
        set_destination(console);
    }
    set_level(level);
    let filter = tracing_subscriber::filter::filter_fn(|meta| {
        rank(meta.level()) <= LEVEL.load(Ordering::Relaxed)
    });
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(Sink)
        .with_ansi(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_target(false)
        .with_filter(filter);
    let _ = tracing_subscriber::registry().with(layer).try_init();
}
