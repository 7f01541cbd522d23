//! A blocking `Read`/`Write` over a channel of byte chunks: how both ends of the guest
//! services' tar streams (`archive-get@tether`, `archive-put@tether`) run the `tar` crate,
//! which is synchronous, on a blocking thread while the SSH channel is served by the
//! runtime.

use std::io::{self, Read, Write};

use tokio::sync::mpsc;

/// Bytes gathered before a chunk is handed over: the channel's packets are about this size.
pub const CHUNK: usize = 64 * 1024;

/// A `Write` that hands its bytes to an async consumer in chunks of [`CHUNK`] (and the rest
/// on `flush`). Must be used from a blocking thread, never from the runtime.
#[derive(Debug)]
pub struct ChunkWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    gone: &'static str,
}

impl ChunkWriter {
    /// Writes to `tx`; `gone` is the error's text when the consumer has gone.
    pub fn new(tx: mpsc::Sender<Vec<u8>>, gone: &'static str) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(CHUNK),
            gone,
        }
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buf);
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, self.gone))
    }
}

/// A `Read` over the chunks an async producer sends; end of file when it closes. Must be
/// used from a blocking thread, never from the runtime.
#[derive(Debug)]
pub struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    at: usize,
}

impl ChunkReader {
    /// Reads what arrives on `rx`.
    pub fn new(rx: mpsc::Receiver<Vec<u8>>) -> Self {
        Self {
            rx,
            cur: Vec::new(),
            at: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at >= self.cur.len() {
            match self.rx.blocking_recv() {
                Some(c) => {
                    self.cur = c;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.at);
        out[..n].copy_from_slice(&self.cur[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_written_come_back_whole_and_in_order() {
        let (tx, rx) = mpsc::channel(4);
        let data: Vec<u8> = (0..=250u8).cycle().take(3 * CHUNK + 17).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            let mut w = ChunkWriter::new(tx, "gone");
            for part in sent.chunks(1000) {
                w.write_all(part)?;
            }
            w.flush()
        });
        let mut got = Vec::new();
        ChunkReader::new(rx).read_to_end(&mut got).unwrap();
        writer.join().unwrap().unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn a_writer_whose_reader_is_gone_says_so() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut w = ChunkWriter::new(tx, "the reader went away");
        let e = w.write_all(&vec![0; CHUNK]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(e.to_string(), "the reader went away");
    }
}
