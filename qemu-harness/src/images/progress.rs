//! Progress of long steps (reading an archive, checking layers, building disks).
//!
//! The store reports; a front end decides how to show it. [`Terminal`] draws one status line
//! on stderr when stderr is a terminal and stays silent otherwise, as `docker load` does.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Receives progress reports. Calls come from the thread running the store operation.
pub trait Progress {
    /// A step starts; `total` is its size in bytes when known.
    fn start(&self, step: &str, total: Option<u64>);
    /// Bytes done so far in the current step.
    fn update(&self, done: u64);
    /// The current step is over.
    fn finish(&self);
}

/// Shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: Option<u64>) {}
    fn update(&self, _: u64) {}
    fn finish(&self) {}
}

/// A status line on stderr, redrawn at most 10 times a second, only when stderr is a
/// terminal.
#[derive(Debug)]
pub struct Terminal {
    enabled: bool,
    state: Mutex<TermState>,
}

#[derive(Debug)]
struct TermState {
    step: String,
    total: Option<u64>,
    started: Instant,
    drawn: Option<Instant>,
}

impl Terminal {
    /// Enabled when stderr is a terminal.
    pub fn stderr() -> Terminal {
        Terminal::new(std::io::stderr().is_terminal())
    }

    pub fn new(enabled: bool) -> Terminal {
        Terminal {
            enabled,
            state: Mutex::new(TermState {
                step: String::new(),
                total: None,
                started: Instant::now(),
                drawn: None,
            }),
        }
    }

    fn draw(&self, st: &TermState, done: u64, last: bool) {
        let mut line = format!("\r\x1b[2K{}", st.step);
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        match st.total {
            Some(t) if t > 0 => line.push_str(&format!(
                ": {:.1}/{:.1} MiB ({}%)",
                mib(done),
                mib(t),
                done.min(t) * 100 / t
            )),
            _ if done > 0 => line.push_str(&format!(": {:.1} MiB", mib(done))),
            _ => {}
        }
        if last {
            line.push_str(&format!(
                " done in {:.1} s\n",
                st.started.elapsed().as_secs_f64()
            ));
        }
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
    }
}

impl Progress for Terminal {
    fn start(&self, step: &str, total: Option<u64>) {
        if !self.enabled {
            return;
        }
        if let Ok(mut st) = self.state.lock() {
            st.step = step.to_owned();
            st.total = total;
            st.started = Instant::now();
            st.drawn = None;
            self.draw(&st, 0, false);
        }
    }

    fn update(&self, done: u64) {
        if !self.enabled {
            return;
        }
        if let Ok(mut st) = self.state.lock() {
            let due = st
                .drawn
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
            if due {
                st.drawn = Some(Instant::now());
                self.draw(&st, done, false);
            }
        }
    }

    fn finish(&self) {
        if !self.enabled {
            return;
        }
        if let Ok(st) = self.state.lock() {
            self.draw(&st, st.total.unwrap_or(0), true);
        }
    }
}

/// A reader that reports the bytes read through it.
pub(crate) struct Counting<'p, R> {
    pub inner: R,
    pub progress: &'p dyn Progress,
    pub done: u64,
}

impl<R: std::io::Read> std::io::Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        self.progress.update(self.done);
        Ok(n)
    }
}

impl<R> std::fmt::Debug for Counting<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counting")
            .field("done", &self.done)
            .finish()
    }
}
