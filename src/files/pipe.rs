//! A bounded in-memory pipe between two threads: the run writes batches
//! into one end, and a streaming consumer (the OpenPGP encryptor, an HTTP
//! response) reads from the other. At most `depth` chunks wait, so memory
//! stays bounded whatever the file's size.

use std::io::{Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// The writing end; dropping it ends the stream.
pub struct PipeWriter(SyncSender<Vec<u8>>);

/// The reading end.
pub struct PipeReader {
    chunks: Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

/// A pipe holding at most `depth` chunks in flight.
pub fn pipe(depth: usize) -> (PipeWriter, PipeReader) {
    let (sender, receiver) = sync_channel(depth);
    (
        PipeWriter(sender),
        PipeReader {
            chunks: receiver,
            current: Vec::new(),
            at: 0,
        },
    )
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.0.send(buf.to_vec()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the reading end is gone")
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.current = chunk;
                    self.at = 0;
                }
                // The writer is gone: the end of the stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_in_order_and_the_end_is_seen() {
        let (mut writer, mut reader) = pipe(2);
        let producer = std::thread::spawn(move || {
            for i in 0..100u8 {
                writer.write_all(&[i; 10]).unwrap();
            }
        });
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        producer.join().unwrap();
        assert_eq!(all.len(), 1000);
        assert!(all
            .chunks(10)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
    }
}
