//! The terminal's end of an [`Attachment`] (`vch run -it`, `vch attach`, `vch exec`): the
//! terminal in raw mode for tty sessions, its size sent first and again on SIGWINCH, stdin
//! with its end, the detach keys, output to stdout and stderr.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use backchannel::requests::WindowSize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::engine::{Attachment, DetachKeys, Ended};

/// How to bind the local terminal to an attachment.
#[derive(Debug, Clone, Default)]
pub struct TerminalOptions {
    /// Send our stdin.
    pub stdin: bool,
    /// Send `unblock` once bound (after the first size): the session waits for it when it
    /// was started for this attachment.
    pub unblock: bool,
    /// Detach on these keys (tty sessions, as docker).
    pub detach_keys: Option<DetachKeys>,
}

/// Puts the terminal in raw mode until dropped.
#[derive(Debug)]
struct RawTerminal {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawTerminal {
    fn enter() -> RawTerminal {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawTerminal { saved: None };
        }
        let Ok(saved) = nix::sys::termios::tcgetattr(stdin.as_fd()) else {
            return RawTerminal { saved: None };
        };
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        let _ =
            nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw);
        RawTerminal { saved: Some(saved) }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// The local terminal's size, if stdout or stdin is a terminal.
pub fn terminal_size() -> Option<WindowSize> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a `winsize` into the valid pointer we pass; the fd is
        // only read, and an invalid fd just makes the call fail.
        let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        if r == 0 && ws.ws_col > 0 {
            return Some(WindowSize {
                cols: ws.ws_col.into(),
                rows: ws.ws_row.into(),
                width_px: ws.ws_xpixel.into(),
                height_px: ws.ws_ypixel.into(),
            });
        }
    }
    None
}

/// Reads our stdin on a thread of its own: a blocking read cannot be cancelled, and a
/// runtime's blocking pool would wait for it at exit (so `vch` would hang after the session
/// ended until the next keystroke). The thread dies with the process.
fn stdin_chunks() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
        // Dropping the sender tells the reader that our input ended.
    });
    rx
}

/// Binds this process's terminal (or pipes) to an attachment until the session ends or the
/// user detaches.
pub async fn attach(att: Attachment, opts: TerminalOptions) -> Ended {
    let Attachment {
        tty,
        mut output,
        mut errors,
        control,
        ..
    } = att;
    let _raw = if tty && opts.stdin && std::io::stdin().is_terminal() {
        Some(RawTerminal::enter())
    } else {
        None
    };
    if tty {
        if let Some(ws) = terminal_size() {
            control.resize(ws).await;
        }
    }
    if opts.unblock {
        control.unblock().await;
    }

    let (detach_tx, mut detach_rx) = tokio::sync::oneshot::channel::<()>();
    let input = opts.stdin.then(|| {
        let c = control.clone();
        let mut keys = opts.detach_keys.clone().filter(|_| tty);
        tokio::spawn(async move {
            let mut chunks = stdin_chunks();
            while let Some(chunk) = chunks.recv().await {
                let (pass, detached) = match keys.as_mut() {
                    Some(k) => k.scan(&chunk),
                    None => (chunk, false),
                };
                if c.write(&pass).await.is_err() {
                    return;
                }
                if detached {
                    let _ = detach_tx.send(());
                    return;
                }
            }
            c.close_stdin().await;
        })
    });
    let resize = tty.then(|| {
        let c = control.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(ws) = terminal_size() {
                    c.resize(ws).await;
                }
            }
        })
    });

    let out = async {
        let mut stdout = tokio::io::stdout();
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = output.read(&mut buf).await {
            if n == 0 || stdout.write_all(&buf[..n]).await.is_err() {
                break;
            }
            let _ = stdout.flush().await;
        }
    };
    let err = async {
        let mut stderr = tokio::io::stderr();
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = errors.read(&mut buf).await {
            if n == 0 || stderr.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let detached = tokio::select! {
        _ = async { tokio::join!(out, err) } => false,
        Ok(()) = &mut detach_rx => true,
    };
    if let Some(t) = input {
        t.abort();
    }
    if let Some(t) = resize {
        t.abort();
    }
    if detached {
        control.detach().await;
        return Ended::Detached;
    }
    control.finish().await
}
