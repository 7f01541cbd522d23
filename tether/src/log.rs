//! Logging to the debug channel.
//!
//! Early in boot only the console exists; once the kernel modules are loaded the tether moves
//! its log to the debug channel (a virtio-serial port under QEMU, `/dev/ttyS1` on vSphere). The
//! destination is a process-wide slot so the switch needs no re-initialisation of `tracing`.
//!
//! Level policy: `error` = the user's action failed (a launch, a mount, a write-back);
//! `warn` = abnormal but harmless; `info` = rare state changes (boot phases, session start and
//! exit, power-off); `debug`/`trace` = developer detail.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::subscriber::{Interest, Subscriber};
use tracing::{span, Event, Level, Metadata};

static SINK: OnceLock<Mutex<Option<File>>> = OnceLock::new();
/// Whether the console was opened (or tried) as the destination of last resort.
static CONSOLE_TRIED: AtomicBool = AtomicBool::new(false);
/// Most verbose level logged: 1 = error ... 5 = trace. Changes at runtime with the config.
static LEVEL: AtomicU8 = AtomicU8::new(3);

fn rank(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// Changes the most verbose level logged.
pub fn set_level(level: Level) {
    LEVEL.store(rank(&level), Ordering::Relaxed);
}

fn sink() -> MutexGuard<'static, Option<File>> {
    let m = SINK.get_or_init(|| Mutex::new(None));
    // A poisoned lock only means a writer panicked mid-line; the file is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes to the destination. Until the debug channel is set, that is the console, opened
/// by the first line written: opening the UART costs milliseconds under TCG, and a normal
/// boot logs nothing before the debug channel exists.
fn write_dest(bytes: &[u8]) {
    let mut dest = sink();
    if dest.is_none() && !CONSOLE_TRIED.swap(true, Ordering::Relaxed) {
        *dest = File::options().write(true).open("/dev/console").ok();
    }
    if let Some(f) = dest.as_mut() {
        // A log line must never block or fail PID 1's work: errors are dropped.
        let _ = f.write_all(bytes);
    }
}

/// Sends all further log lines to `file`.
pub fn set_destination(file: File) {
    *sink() = Some(file);
}

/// Writes raw bytes to the log destination (used by the panic hook, which must not depend
/// on `tracing` being healthy).
pub fn write_raw(bytes: &[u8]) {
    write_dest(bytes);
}

/// The tether's subscriber: one line per event, `<uptime> <LEVEL> <message> <field=value>...`,
/// the layout `tracing-subscriber`'s `fmt` wrote without target and ANSI (strings unquoted). Written by hand
/// because under TCG every function first run costs its translation, and the generic `fmt`
/// machinery put ten milliseconds on the way to the first launch; spans are not used.
#[derive(Debug)]
struct Logger {
    start: Instant,
}

/// Appends an event's fields: the message as is, the others as `name=value` (`Debug`, which
/// for `%value` fields is their `Display`; strings unquoted), separated by spaces.
struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    /// Strings as they are: `Debug` would quote and escape them, and its escaping pulls in
    /// the Unicode tables, several milliseconds of first-run code on the way to the launch.
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        use std::fmt::Write as _;
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = match field.name() {
            "message" => write!(self.0, "{value:?}"),
            name => write!(self.0, "{}={value:?}", name.trim_start_matches("r#")),
        };
    }
}

fn level_str(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => " WARN",
        Level::INFO => " INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

impl Logger {
    fn line(&self, event: &Event<'_>) -> String {
        let up = self.start.elapsed();
        let mut fields = String::new();
        event.record(&mut Fields(&mut fields));
        format!(
            "{:4}.{:09}s {} {fields}\n",
            up.as_secs(),
            up.subsec_nanos(),
            level_str(event.metadata().level())
        )
    }
}

impl Subscriber for Logger {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // The level changes at run time (the config's debug level): ask every time.
        Interest::sometimes()
    }
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        rank(meta.level()) <= LEVEL.load(Ordering::Relaxed)
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        write_dest(self.line(event).as_bytes());
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

/// Installs the global subscriber. The timestamp is the time since it was installed, early
/// in PID 1: boot phases read directly off it.
pub fn init(level: Level) {
    set_level(level);
    let _ = tracing::subscriber::set_global_default(Logger {
        start: Instant::now(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_layout() {
        let logger = Logger {
            start: Instant::now(),
        };
        let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        let capture = Capture(logger, seen);
        tracing::subscriber::with_default(capture, || {
            let id = "abc";
            let e = std::io::Error::other("boom");
            tracing::info!(modules = 0, version = "0.1.0", "tether started");
            tracing::error!(session = %id, error = %e, "launch failed");
            tracing::warn!("{id} is {}", 5);
            tracing::debug!("not shown at info");
        });
        let lines = lines.lock().unwrap();
        let tail = |l: &String| l.split_once("s ").map(|(_, t)| t.to_owned()).unwrap();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            tail(&lines[0]),
            " INFO tether started modules=0 version=0.1.0\n"
        );
        assert_eq!(
            tail(&lines[1]),
            "ERROR launch failed session=abc error=boom\n"
        );
        assert_eq!(tail(&lines[2]), " WARN abc is 5\n");
        let stamp = lines[0].split_once("s ").unwrap().0;
        assert_eq!(stamp.len(), 14, "{stamp:?}");
        assert!(stamp.starts_with("   0."), "{stamp:?}");
    }

    /// The logger, writing into a vector instead of the log destination.
    struct Capture(Logger, std::sync::Arc<Mutex<Vec<String>>>);

    impl Subscriber for Capture {
        fn enabled(&self, meta: &Metadata<'_>) -> bool {
            self.0.enabled(meta)
        }
        fn new_span(&self, a: &span::Attributes<'_>) -> span::Id {
            self.0.new_span(a)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, event: &Event<'_>) {
            self.1.lock().unwrap().push(self.0.line(event));
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }
}
