//! Where a run's batches go, and what an interrupted run leaves to resume
//! from.
//!
//! With gzip, each batch is its own gzip member (a gzip file may hold
//! several, and every reader joins them): an output cut at a batch boundary
//! stays a valid file, and the run resumed from there writes the same
//! bytes an uninterrupted run would.

use std::io::Write;
use std::path::Path;

use super::Counts;

/// Writes batches, counting the bytes.
pub struct BatchWriter<W: Write> {
    out: W,
    gzip: bool,
    written: u64,
}

impl<W: Write> BatchWriter<W> {
    /// Batches into `out`, each gzip-compressed when `gzip`; `written` bytes
    /// are there already (a resumed run).
    pub fn new(out: W, gzip: bool, written: u64) -> Self {
        Self { out, gzip, written }
    }

    /// Writes one batch (nothing for an empty one).
    pub fn write_batch(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.gzip {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(bytes)?;
            let member = encoder.finish()?;
            self.out.write_all(&member)?;
            self.written += member.len() as u64;
        } else {
            self.out.write_all(bytes)?;
            self.written += bytes.len() as u64;
        }
        Ok(())
    }

    /// Bytes written in all.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The destination.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// The destination, flushed.
    pub fn into_inner(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// What `--resume` needs: the run's settings (a digest: the same command
/// line must continue it), its counts, and how long the output and the
/// reject report were after the last whole batch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Digest of the settings that shape the output.
    pub settings: String,
    /// The counts after the last whole batch.
    pub counts: Counts,
    /// Bytes of output then.
    pub output_bytes: u64,
    /// Bytes of the reject report then.
    pub rejects_bytes: u64,
}

impl Checkpoint {
    /// Saves it at `path`, atomically (a new file, synced, renamed over).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".new");
        let temporary = std::path::PathBuf::from(temporary);
        {
            let mut file = std::fs::File::create(&temporary)?;
            // Invariant: strings and integers always serialize.
            file.write_all(&serde_json::to_vec(self).expect("a checkpoint serializes"))?;
            file.sync_all()?;
        }
        std::fs::rename(&temporary, path)
    }

    /// Reads one saved at `path`.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes)
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn gzip_members_join_into_one_stream() {
        let mut writer = BatchWriter::new(Vec::new(), true, 0);
        writer.write_batch(b"a,b\n").unwrap();
        writer.write_batch(b"").unwrap();
        writer.write_batch(b"c,d\n").unwrap();
        let written = writer.written();
        let bytes = writer.into_inner().unwrap();
        assert_eq!(bytes.len() as u64, written);
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "a,b\nc,d\n");
    }
}
