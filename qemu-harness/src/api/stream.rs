//! Hijacked connections (attach, exec start): after `101 UPGRADED` the connection carries
//! the session's input one way and its output the other, raw with a terminal and in docker's
//! 8-byte-header frames without one. The client's half-close is the end of its input; the
//! session's end closes the connection, after its exit status was recorded.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Mutex};

use super::http::{frame, ApiError, ApiResult, Body};
use crate::engine::{Attachment, DetachKeys, Ended, LogItem, PendingAttachment};

/// The upgraded connection.
pub type Io = TokioIo<hyper::upgrade::Upgraded>;

/// Which streams a client asked for.
#[derive(Debug, Clone)]
pub struct Streams {
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub detach_keys: Option<DetachKeys>,
}

/// docker's system-error stream: the message ends the stream with an error on the client.
const SYSTEM_ERROR: u8 = 3;

/// A 101 answer for a hijacked stream.
fn upgraded() -> Response<Body> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(
            hyper::header::CONTENT_TYPE,
            "application/vnd.docker.raw-stream",
        )
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, "tcp")
        .body(Body::Empty)
        .unwrap_or_else(|_| Response::new(Body::Empty))
}

/// Answers `101` and runs `f` on the connection once hyper hands it over.
pub fn hijack<F, Fut>(mut req: Request<Incoming>, f: F) -> ApiResult
where
    F: FnOnce(Io) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let on = req.extensions_mut().remove::<OnUpgrade>();
    hijack_parts(req.headers(), on, f)
}

/// [`hijack`] for a request already taken apart (to read its body first).
pub fn hijack_parts<F, Fut>(headers: &HeaderMap, on: Option<OnUpgrade>, f: F) -> ApiResult
where
    F: FnOnce(Io) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let wants = headers
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"));
    let (true, Some(on)) = (wants, on) else {
        return Err(ApiError::bad_request(
            "this endpoint hijacks the connection: send Connection: Upgrade and Upgrade: tcp",
        ));
    };
    tokio::spawn(async move {
        match on.await {
            Ok(u) => f(TokioIo::new(u)).await,
            Err(e) => tracing::debug!(error = %e, "upgrade"),
        }
    });
    Ok(upgraded())
}

/// Serves `attach`: the log so far (with `logs=1`), then the live session (with
/// `stream=1`), bound as soon as the container runs.
pub async fn attach_session(
    io: Io,
    history: Option<mpsc::Receiver<LogItem>>,
    pending: Option<PendingAttachment>,
    streams: Streams,
) {
    let (rd, wr) = tokio::io::split(io);
    let wr = Arc::new(Mutex::new(wr));
    if let Some(mut rx) = history {
        if !write_items(&wr, &mut rx, &streams).await {
            return;
        }
    }
    let Some(pending) = pending else {
        let _ = wr.lock().await.shutdown().await;
        return;
    };
    match pending.bind().await {
        Ok(att) => {
            att.control.unblock().await;
            bridge(rd, wr, att, streams).await;
        }
        Err(e) => fail(&wr, streams.tty, &e.to_string()).await,
    }
}

/// Writes log items to the connection (framed without a terminal); false when the client
/// is gone.
async fn write_items<W: AsyncWrite + Unpin>(
    wr: &Mutex<W>,
    rx: &mut mpsc::Receiver<LogItem>,
    streams: &Streams,
) -> bool {
    while let Some(LogItem::Line(l)) = rx.recv().await {
        let wanted = match l.stream {
            iolog::Stream::Stdout => streams.stdout,
            iolog::Stream::Stderr => streams.stderr,
        };
        if !wanted {
            continue;
        }
        let chunk = if streams.tty {
            bytes::Bytes::from(l.bytes)
        } else {
            frame(
                if l.stream == iolog::Stream::Stderr {
                    2
                } else {
                    1
                },
                &l.bytes,
            )
        };
        let mut w = wr.lock().await;
        if w.write_all(&chunk).await.is_err() || w.flush().await.is_err() {
            return false;
        }
    }
    true
}

/// Serves an `attach` without stdin from the container's output log: the log so far (with
/// `logs=1`), then what the primary process writes until its streams end.
pub async fn output_session(
    io: Io,
    history: Option<mpsc::Receiver<LogItem>>,
    mut output: mpsc::Receiver<LogItem>,
    streams: Streams,
) {
    let (_rd, wr) = tokio::io::split(io);
    let wr = Mutex::new(wr);
    if let Some(mut rx) = history {
        if !write_items(&wr, &mut rx, &streams).await {
            return;
        }
    }
    if write_items(&wr, &mut output, &streams).await {
        let _ = tokio::time::timeout(Duration::from_secs(5), wr.lock().await.shutdown()).await;
    }
}

/// Ends a hijacked stream with an error the client prints.
pub async fn fail<W: AsyncWrite + Unpin>(wr: &Mutex<W>, tty: bool, message: &str) {
    let mut w = wr.lock().await;
    let _ = if tty {
        w.write_all(format!("{message}\r\n").as_bytes()).await
    } else {
        w.write_all(&frame(SYSTEM_ERROR, message.as_bytes())).await
    };
    let _ = w.shutdown().await;
}

/// Copies one of the session's outputs to the connection; false when the client is gone.
async fn pump<R, W>(mut from: R, to: &Mutex<W>, stream: u8, tty: bool, wanted: bool) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(n) => n,
        };
        if !wanted {
            continue;
        }
        let mut w = to.lock().await;
        let r = if tty {
            w.write_all(&buf[..n]).await
        } else {
            w.write_all(&frame(stream, &buf[..n])).await
        };
        if r.is_err() || w.flush().await.is_err() {
            return false;
        }
    }
}

/// Joins a hijacked connection and a bound attachment until the session ends, the client
/// detaches or goes away. Returns how it ended (the exit status is recorded before the
/// connection closes: docker's client asks for it right after).
pub async fn bridge<R, W>(mut rd: R, wr: Arc<Mutex<W>>, att: Attachment, streams: Streams) -> Ended
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Attachment {
        output,
        errors,
        control,
        tty,
        ..
    } = att;
    let (detached_tx, mut detached_rx) = tokio::sync::oneshot::channel::<()>();
    let input = {
        let c = control.clone();
        let mut keys = streams.detach_keys.clone().filter(|_| tty && streams.stdin);
        let stdin = streams.stdin;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if !stdin {
                    continue;
                }
                let (pass, detached) = match keys.as_mut() {
                    Some(k) => k.scan(&buf[..n]),
                    None => (buf[..n].to_vec(), false),
                };
                if c.write(&pass).await.is_err() {
                    return;
                }
                if detached {
                    let _ = detached_tx.send(());
                    return;
                }
            }
            // The client's input ended. As dockerd: with a terminal that ends the
            // attachment (docker's client also closes its connection when it sees the
            // detach keys itself) and the process's stdin stays open; without one, the
            // process's stdin is closed (once every attached input has ended).
            if stdin {
                if tty {
                    let _ = detached_tx.send(());
                } else {
                    c.close_stdin().await;
                }
            }
        })
    };
    let out = pump(output, &wr, 1, tty, streams.stdout);
    let err = pump(errors, &wr, 2, tty, streams.stderr);
    let outcome = tokio::select! {
        (a, b) = async { tokio::join!(out, err) } => if a && b { None } else { Some(Ended::Detached) },
        Ok(()) = &mut detached_rx => Some(Ended::Detached),
    };
    input.abort();
    let ended = match outcome {
        // Detached, or the client is gone: the session goes on.
        Some(e) => {
            control.detach().await;
            e
        }
        None => control.finish().await,
    };
    let mut w = wr.lock().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), w.shutdown()).await;
    ended
}
