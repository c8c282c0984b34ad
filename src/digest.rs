//! A `Write` that counts and checksums (CRC-32) what passes through it: how output
//! partitions and checkpoint shards get their manifest entries without reading the file
//! back.

use std::io::Write;

/// Counts the bytes and computes the CRC-32 (IEEE) of everything written through it.
pub(crate) struct ChecksumWriter<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> ChecksumWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        ChecksumWriter { inner, hasher: crc32fast::Hasher::new(), bytes: 0 }
    }

    /// The inner writer, the number of bytes and their CRC-32.
    pub(crate) fn finish(self) -> (W, u64, u32) {
        (self.inner, self.bytes, self.hasher.finalize())
    }
}

impl<W: Write> Write for ChecksumWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_checksums_what_passes() {
        let mut w = ChecksumWriter::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (inner, bytes, crc) = w.finish();
        assert_eq!((inner.as_slice(), bytes, crc), (&b"hello world"[..], 11, crc32fast::hash(b"hello world")));
    }
}
