//! SHA-256 of a stream as it is read: the digest a bulk file's audit record
//! names (what `sha256sum` prints for the file).

use std::io::Read;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// Hashes every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Arc<Mutex<Sha256>>,
}

/// The digest of what a [`HashingReader`] has read so far, readable after
/// the reader has moved into a decoder.
pub struct StreamDigest(Arc<Mutex<Sha256>>);

impl StreamDigest {
    /// The digest so far, in hex.
    pub fn hex(&self) -> String {
        let hasher = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        hex::encode(hasher.finalize())
    }
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`; the handle reads the digest.
    pub fn new(inner: R) -> (Self, StreamDigest) {
        let hasher = Arc::new(Mutex::new(Sha256::new()));
        (
            Self {
                inner,
                hasher: hasher.clone(),
            },
            StreamDigest(hasher),
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_what_was_read() {
        let (mut reader, digest) = HashingReader::new(&b"abc"[..]);
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        assert_eq!(
            digest.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
