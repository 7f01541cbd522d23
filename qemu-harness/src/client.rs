//! The user's end of `attach` and `exec`: a channel to a session, the terminal in raw mode
//! for tty sessions, resizes on SIGWINCH, stdin with its end, ctrl-p ctrl-q to detach.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use backchannel::requests::{self as req, WindowSize};
use sshproto::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How to bind the local terminal to a session.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttachOptions {
    /// The session has a tty: raw terminal and resizes.
    pub tty: bool,
    /// Send our stdin.
    pub stdin: bool,
    /// Send `unblock` once bound (the session waits for it under `runblock`).
    pub unblock: bool,
    /// ctrl-p ctrl-q detaches (tty sessions, as docker).
    pub detach_keys: bool,
}

/// How an attachment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The session ended with this exit status.
    Exited(i64),
    /// The user detached; the session goes on.
    Detached,
    /// The channel closed without an exit status.
    Closed,
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

/// Attaches to session `id` over `conn` (the tether's back-channel, or a keeper's control
/// socket, which relays it) until the session ends or the user detaches.
pub async fn attach(conn: &Connection, id: &str, opts: AttachOptions) -> Result<Ended, String> {
    let ch = conn
        .open_channel(req::CHANNEL_ATTACH, id.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let _raw = if opts.tty && opts.stdin && std::io::stdin().is_terminal() {
        Some(RawTerminal::enter())
    } else {
        None
    };
    let mut err_reader = ch.stderr();
    let (mut reader, writer) = ch.split();
    if opts.tty {
        if let Some(ws) = terminal_size() {
            let _ = writer.request(req::REQ_WINDOW_CHANGE, &ws.payload()).await;
        }
    }
    if opts.unblock {
        let _ = writer.request(req::REQ_UNBLOCK, req::UNBLOCK_PAYLOAD).await;
    }
    let writer = std::sync::Arc::new(tokio::sync::Mutex::new(writer));

    let (detach_tx, mut detach_rx) = tokio::sync::oneshot::channel::<()>();
    let input = if opts.stdin {
        let w = writer.clone();
        let detach_keys = opts.detach_keys && opts.tty;
        Some(tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            let mut saw_ctrl_p = false;
            loop {
                let n = match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut chunk = &buf[..n];
                if detach_keys {
                    for (i, b) in chunk.iter().enumerate() {
                        if saw_ctrl_p && *b == 0x11 {
                            let _ = detach_tx.send(());
                            return;
                        }
                        saw_ctrl_p = *b == 0x10;
                        if saw_ctrl_p && i + 1 == chunk.len() {
                            // Hold a trailing ctrl-p until we know whether ctrl-q follows.
                            chunk = &chunk[..i];
                            break;
                        }
                    }
                }
                if w.lock().await.write_all(chunk).await.is_err() {
                    return;
                }
            }
            // Our input ended: ask the tether to close the process's stdin once every
            // attached input has ended, then end ours.
            let w = w.lock().await;
            let _ = w.request(req::REQ_CLOSE_STDIN, &[]).await;
            let _ = w.eof();
        }))
    } else {
        None
    };
    let resize = if opts.tty {
        let w = writer.clone();
        Some(tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(ws) = terminal_size() {
                    let _ = w
                        .lock()
                        .await
                        .request(req::REQ_WINDOW_CHANGE, &ws.payload())
                        .await;
                }
            }
        }))
    } else {
        None
    };

    let output = async {
        let out = async {
            let mut stdout = tokio::io::stdout();
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 || stdout.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                let _ = stdout.flush().await;
            }
        };
        let err = async {
            let mut stderr = tokio::io::stderr();
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = err_reader.read(&mut buf).await {
                if n == 0 || stderr.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        tokio::join!(out, err);
    };
    let detached = tokio::select! {
        _ = output => false,
        Ok(()) = &mut detach_rx => true,
    };
    if let Some(t) = input {
        t.abort();
    }
    if let Some(t) = resize {
        t.abort();
    }
    let w = writer.lock().await;
    if detached {
        w.close();
        return Ok(Ended::Detached);
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), w.wait_closed()).await;
    Ok(match w.exit_status() {
        Some(s) => Ended::Exited(i64::from(s)),
        None => Ended::Closed,
    })
}

/// Runs an exec through a keeper's control connection and collects its output (no
/// terminal involved): (exit status, stdout bytes, time from the first to the last byte).
pub async fn exec_collect(
    conn: &Connection,
    spec: &crate::control::ExecSpec,
) -> Result<(i64, Vec<u8>, std::time::Duration), String> {
    let payload = serde_json::to_vec(spec).map_err(|e| e.to_string())?;
    let id = crate::control::request(conn, crate::control::REQ_EXEC, &payload).await?;
    let ch = conn
        .open_channel(req::CHANNEL_ATTACH, &id)
        .await
        .map_err(|e| e.to_string())?;
    let (mut reader, writer) = ch.split();
    let _ = writer.request(req::REQ_UNBLOCK, req::UNBLOCK_PAYLOAD).await;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut first = None;
    loop {
        let n = reader.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(std::time::Instant::now);
        out.extend_from_slice(&buf[..n]);
    }
    let span = first.map(|f| f.elapsed()).unwrap_or_default();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer.wait_closed()).await;
    let code = writer
        .exit_status()
        .map(i64::from)
        .ok_or("no exit status")?;
    Ok((code, out, span))
}
