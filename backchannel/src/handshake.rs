//! The serial synchronisation handshake (VIC `pkg/serial`).
//!
//! A serial line keeps whatever bytes were in flight when the last connection ended, so
//! before SSH starts both ends align: the client sends `SYN x`, the server answers
//! `ACK x+1 y`, the client `ACK y+1`, the server a final `ACK`, and SSH starts on the next
//! byte. Readers take "at least N bytes, keep the last N", which drops line garbage and
//! repeated SYNs. Unlike the original, every read has a timeout, so a silent line never
//! blocks an attempt forever.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const SYN: u8 = 0x16;
pub const ACK: u8 = 0x06;
pub const NAK: u8 = 0x15;

/// Why one handshake attempt failed; the caller retries.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// the peer sent bytes that do not fit the handshake
    #[error("unexpected handshake bytes {0:02x?}")]
    Unexpected(Vec<u8>),
    /// the peer refused the handshake
    #[error("handshake declined by the peer (NAK)")]
    Declined,
    /// nothing arrived in time
    #[error("handshake timed out")]
    Timeout,
    /// the line closed
    #[error("the line closed during the handshake")]
    Closed,
    /// an I/O error
    #[error("handshake I/O: {0}")]
    Io(#[from] std::io::Error),
}

fn token() -> u8 {
    let mut b = [0u8; 1];
    // The token only needs to differ between attempts; a failed RNG read falls back to the
    // clock, which is good enough for that.
    if getrandom::fill(&mut b).is_err() {
        b[0] = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos().to_le_bytes()[0])
            .unwrap_or(0);
    }
    // The original drew from [0, 254].
    b[0] % 255
}

/// Reads until at least `n` bytes arrived and returns the last `n`.
async fn read_last<R: AsyncRead + Unpin>(
    r: &mut R,
    n: usize,
    timeout: Duration,
) -> Result<Vec<u8>, HandshakeError> {
    let mut got: Vec<u8> = Vec::new();
    let mut buf = [0u8; 32 * 1024];
    while got.len() < n {
        let k = match tokio::time::timeout(timeout, r.read(&mut buf)).await {
            Err(_) => return Err(HandshakeError::Timeout),
            Ok(Ok(0)) => return Err(HandshakeError::Closed),
            Ok(Ok(k)) => k,
            Ok(Err(e)) => return Err(e.into()),
        };
        got.extend_from_slice(&buf[..k]);
        // Bounded: only the tail matters.
        if got.len() > n {
            got.drain(..got.len() - n);
        }
    }
    Ok(got)
}

/// Server side (the tether): one attempt. On success SSH starts on the next byte.
pub async fn server<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    timeout: Duration,
) -> Result<(), HandshakeError> {
    server_with_token(s, timeout, token()).await
}

/// [`server`] with its token `y` given (the fuzz target and tests need it known).
pub(crate) async fn server_with_token<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    timeout: Duration,
    y: u8,
) -> Result<(), HandshakeError> {
    let syn = read_last(s, 2, timeout).await?;
    if syn[0] != SYN {
        s.write_all(&[NAK]).await?;
        return Err(HandshakeError::Unexpected(syn));
    }
    let x = syn[1];
    s.write_all(&[ACK, x.wrapping_add(1), y]).await?;
    s.flush().await?;
    let ack = read_last(s, 2, timeout).await?;
    if ack != [ACK, y.wrapping_add(1)] {
        s.write_all(&[NAK]).await?;
        return Err(HandshakeError::Unexpected(ack));
    }
    s.write_all(&[ACK]).await?;
    s.flush().await?;
    Ok(())
}

/// Client side (the port layer): one attempt. On success SSH starts on the next byte.
pub async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    timeout: Duration,
) -> Result<(), HandshakeError> {
    client_with_token(s, timeout, token()).await
}

/// [`client`] with its token `x` given.
pub(crate) async fn client_with_token<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    timeout: Duration,
    x: u8,
) -> Result<(), HandshakeError> {
    s.write_all(&[SYN, x]).await?;
    s.flush().await?;
    let reply = read_last(s, 3, timeout).await?;
    // A well-formed reply wins over any NAK reading: its last byte is the server's token,
    // which is 0x15 one time in 255 and must not read as a refusal.
    if reply[0] != ACK || reply[1] != x.wrapping_add(1) {
        // The server's one-byte NAK ends the window; or it is all there was.
        if reply[0] == NAK || reply[2] == NAK {
            return Err(HandshakeError::Declined);
        }
        return Err(HandshakeError::Unexpected(reply));
    }
    let y = reply[2];
    s.write_all(&[ACK, y.wrapping_add(1)]).await?;
    s.flush().await?;
    // Exactly one byte, so the start of the server's SSH banner is not swallowed.
    let mut last = [0u8; 1];
    match tokio::time::timeout(timeout, s.read_exact(&mut last)).await {
        Err(_) => Err(HandshakeError::Timeout),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(HandshakeError::Closed),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(_)) if last[0] == ACK => Ok(()),
        Ok(Ok(_)) => Err(HandshakeError::Unexpected(last.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    const T: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn both_roles_agree_and_ssh_bytes_follow() {
        let (mut a, mut b) = duplex(1024);
        let srv = tokio::spawn(async move {
            server(&mut b, T).await.unwrap();
            b.write_all(b"SSH-2.0-x\r\n").await.unwrap();
            b
        });
        client(&mut a, T).await.unwrap();
        let mut banner = [0u8; 11];
        a.read_exact(&mut banner).await.unwrap();
        assert_eq!(&banner, b"SSH-2.0-x\r\n");
        srv.await.unwrap();
    }

    #[tokio::test]
    async fn garbage_before_syn_is_dropped_by_a_retry() {
        let (mut a, mut b) = duplex(64 * 1024);
        // Line garbage from an earlier connection, then a client's attempts.
        a.write_all(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x16])
            .await
            .unwrap();
        let srv = tokio::spawn(async move {
            let mut attempts = 0;
            loop {
                attempts += 1;
                if server(&mut b, T).await.is_ok() {
                    return attempts;
                }
            }
        });
        // The client may see the NAK of the failed attempt first: retry as the PL does.
        let mut tries = 0;
        loop {
            tries += 1;
            assert!(tries < 10);
            if client(&mut a, T).await.is_ok() {
                break;
            }
        }
        assert!(srv.await.unwrap() >= 1);
    }

    #[tokio::test]
    async fn server_bytes_match_the_original() {
        let (mut a, mut b) = duplex(1024);
        let srv = tokio::spawn(async move { server(&mut b, T).await });
        a.write_all(&[SYN, 0x41]).await.unwrap();
        let mut reply = [0u8; 3];
        a.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply[..2], &[ACK, 0x42]);
        a.write_all(&[ACK, reply[2].wrapping_add(1)]).await.unwrap();
        let mut fin = [0u8; 1];
        a.read_exact(&mut fin).await.unwrap();
        assert_eq!(fin, [ACK]);
        srv.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn wrong_ack_is_nakked() {
        let (mut a, mut b) = duplex(1024);
        let srv = tokio::spawn(async move { server(&mut b, T).await });
        a.write_all(&[SYN, 0xff]).await.unwrap();
        let mut reply = [0u8; 3];
        a.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply[..2], &[ACK, 0x00], "x+1 wraps");
        a.write_all(&[ACK, reply[2].wrapping_add(2)]).await.unwrap();
        let mut nak = [0u8; 1];
        a.read_exact(&mut nak).await.unwrap();
        assert_eq!(nak, [NAK]);
        assert!(matches!(
            srv.await.unwrap(),
            Err(HandshakeError::Unexpected(_))
        ));
    }

    #[tokio::test]
    async fn a_server_token_equal_to_nak_is_not_a_refusal() {
        let (mut a, mut b) = duplex(1024);
        // A server that happened to draw y = 0x15.
        let srv = tokio::spawn(async move {
            let mut syn = [0u8; 2];
            b.read_exact(&mut syn).await.unwrap();
            assert_eq!(syn[0], SYN);
            b.write_all(&[ACK, syn[1].wrapping_add(1), NAK])
                .await
                .unwrap();
            let mut ack = [0u8; 2];
            b.read_exact(&mut ack).await.unwrap();
            assert_eq!(ack, [ACK, NAK + 1]);
            b.write_all(&[ACK]).await.unwrap();
        });
        client(&mut a, T).await.unwrap();
        srv.await.unwrap();
    }

    #[tokio::test]
    async fn a_trailing_nak_is_a_refusal() {
        let (mut a, mut b) = duplex(1024);
        let srv = tokio::spawn(async move {
            let mut syn = [0u8; 2];
            b.read_exact(&mut syn).await.unwrap();
            // Line garbage, then the server's NAK.
            b.write_all(&[0xde, 0xad, NAK]).await.unwrap();
            b
        });
        assert!(matches!(
            client(&mut a, T).await,
            Err(HandshakeError::Declined)
        ));
        srv.await.unwrap();
    }

    #[tokio::test]
    async fn silence_times_out() {
        let (_a, mut b) = duplex(1024);
        let r = server(&mut b, Duration::from_millis(50)).await;
        assert!(matches!(r, Err(HandshakeError::Timeout)));
    }
}
