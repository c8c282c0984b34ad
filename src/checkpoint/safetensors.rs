//! The safetensors format, written and read by hand (it is small): an 8-byte
//! little-endian header length, a JSON header
//! `{name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`
//! padded with spaces to a multiple of 8 bytes, then the raw little-endian data, offsets
//! counted from the end of the header. Files load with Python's
//! `safetensors.numpy.load_file` and `safetensors.torch.load_file`.

use super::view::{Dtype, TensorRef};
use super::Tensor;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest header the reference implementation accepts (100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// Bytes per block handed to the sink or read from the file: 4 MiB, large enough for
/// full-speed writes and few system calls, small enough to stay in the last-level cache
/// between the write (or read) and the checksum.
const BLOCK: usize = 4 << 20;

/// The JSON header for `tensors` (laid out in order) and `metadata`, padded to 8 bytes.
fn header(tensors: &[TensorRef<'_>], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.bytes().len();
        map.insert(
            t.name().to_string(),
            serde_json::json!({ "dtype": t.dtype().name(), "shape": t.shape(), "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    if !metadata.is_empty() {
        map.insert("__metadata__".into(), serde_json::to_value(metadata).expect("strings serialize"));
    }
    let mut bytes = serde_json::to_vec(&serde_json::Value::Object(map)).expect("json values serialize");
    while !bytes.len().is_multiple_of(8) {
        bytes.push(b' ');
    }
    bytes
}

/// Produces the safetensors file of `tensors` and `metadata` as a sequence of byte blocks
/// passed to `sink` in file order: the header length and header, then each tensor's bytes
/// as slices of the caller's memory of at most 4 MiB (no copy: the views are little-endian
/// already).
pub(crate) fn encode_blocks<E>(
    tensors: &[TensorRef<'_>],
    metadata: &BTreeMap<String, String>,
    mut sink: impl FnMut(&[u8]) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let header = header(tensors, metadata);
    let mut buf = Vec::with_capacity(8 + header.len());
    buf.extend_from_slice(&(header.len() as u64).to_le_bytes());
    buf.extend_from_slice(&header);
    sink(&buf)?;
    for t in tensors {
        for block in t.bytes().chunks(BLOCK) {
            sink(block)?;
        }
    }
    Ok(())
}

/// The bytes of a safetensors file holding `tensors` and `metadata`.
pub(crate) fn to_bytes(tensors: &[TensorRef<'_>], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + tensors.iter().map(|t| t.bytes().len() + 64).sum::<usize>());
    encode_blocks(tensors, metadata, |b| {
        out.extend_from_slice(b);
        Ok::<_, std::convert::Infallible>(())
    })
    .unwrap_or_else(|never| match never {});
    out
}

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    /// Byte range in the data section.
    pub(crate) begin: usize,
    pub(crate) end: usize,
}

/// Parses the header of a safetensors file (`path`, named in errors) whose data section
/// holds `data_len` bytes: the tensors sorted by offset, which must cover the data exactly
/// (no holes, no overlaps, as the format requires), and the metadata.
fn parse_header(path: &Path, header: &[u8], data_len: usize) -> Result<(Vec<Entry>, BTreeMap<String, String>)> {
    let bad = |location: Option<String>, detail: String| Error::input(path, location, detail);
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| bad(Some("header".into()), format!("the safetensors header is not a JSON object: {e}")))?;
    let mut metadata = BTreeMap::new();
    let mut entries = Vec::new();
    for (name, entry) in header {
        if name == "__metadata__" {
            metadata = serde_json::from_value(entry)
                .map_err(|e| bad(Some("__metadata__".into()), format!("metadata is not a map of strings: {e}")))?;
            continue;
        }
        let loc = || Some(format!("tensor {name:?}"));
        #[derive(serde::Deserialize)]
        struct Raw {
            dtype: String,
            shape: Vec<usize>,
            data_offsets: [usize; 2],
        }
        let e: Raw = serde_json::from_value(entry).map_err(|e| bad(loc(), format!("bad header entry: {e}")))?;
        let Some(dtype) = Dtype::from_name(&e.dtype) else {
            let known: Vec<&str> = Dtype::ALL.iter().map(|d| d.name()).collect();
            return Err(bad(
                loc(),
                format!("dtype {} is not supported: gang checkpoints hold {}", e.dtype, known.join(", ")),
            ));
        };
        let [begin, end] = e.data_offsets;
        let bytes = e.shape.iter().try_fold(dtype.size(), |a, &d| a.checked_mul(d));
        if begin > end || end > data_len || bytes != Some(end - begin) {
            return Err(bad(
                loc(),
                format!(
                    "shape {:?} of {dtype} and data offsets [{begin}, {end}] do not fit each other or the {data_len} \
                     data bytes",
                    e.shape
                ),
            ));
        }
        entries.push(Entry { name, dtype, shape: e.shape, begin, end });
    }
    entries.sort_by_key(|e| (e.begin, e.end));
    let mut at = 0;
    for e in &entries {
        if e.begin != at {
            return Err(bad(
                Some(format!("tensor {:?}", e.name)),
                format!(
                    "its data begins at byte {} but the tensors before it end at {at}: overlapping tensors or a hole",
                    e.begin
                ),
            ));
        }
        at = e.end;
    }
    if at != data_len {
        return Err(bad(
            None,
            format!("the tensors end at data byte {at} but the file holds {data_len}: a hole at the end"),
        ));
    }
    Ok((entries, metadata))
}

/// The header length at the start of a safetensors file of `len` bytes, checked.
fn header_len(path: &Path, prefix: [u8; 8], len: u64) -> Result<usize> {
    let header_len = u64::from_le_bytes(prefix);
    let rest = len - 8;
    if header_len > MAX_HEADER || header_len > rest {
        return Err(Error::input(
            path,
            None,
            format!("safetensors header length {header_len} does not fit the file ({rest} bytes after it): truncated or damaged"),
        ));
    }
    Ok(header_len as usize)
}

/// The error for a tensor that is not `F32` where `f32` tensors are wanted.
pub(crate) fn not_f32(e: &Entry) -> String {
    format!(
        "is {} {:?}, not F32: read it with CheckpointStore::restore_into into a buffer of that dtype",
        e.dtype, e.shape
    )
}

/// Parses a whole safetensors file of `f32` tensors held in `bytes` (read from `path`,
/// named in errors): its tensors in file order and its metadata.
///
/// # Errors
/// [`Error::Input`] naming `path` when the file is truncated, the header is not valid, or a
/// tensor is not `F32` or does not fit the data.
pub(crate) fn decode(path: &Path, bytes: &[u8]) -> Result<(Vec<Tensor>, BTreeMap<String, String>)> {
    if bytes.len() < 8 {
        return Err(Error::input(
            path,
            None,
            format!("truncated safetensors file ({} bytes, not even a header length)", bytes.len()),
        ));
    }
    let n = header_len(path, bytes[..8].try_into().expect("8 bytes"), bytes.len() as u64)?;
    let data = &bytes[8 + n..];
    let (entries, metadata) = parse_header(path, &bytes[8..8 + n], data.len())?;
    let mut tensors = Vec::with_capacity(entries.len());
    for e in entries {
        if e.dtype != Dtype::F32 {
            return Err(Error::input(path, Some(format!("tensor {:?}", e.name)), not_f32(&e)));
        }
        let mut values = vec![0f32; (e.end - e.begin) / 4];
        super::view::bytes_of_mut(&mut values).copy_from_slice(&data[e.begin..e.end]);
        tensors.push(Tensor { name: e.name, shape: e.shape, data: values });
    }
    Ok((tensors, metadata))
}

/// A safetensors file being read against its manifest entry (length and CRC-32): the
/// header is parsed on opening, the data is then read straight into the caller's buffers
/// ([`ShardFile::read_into`]) or only checked ([`ShardFile::verify`]), and the checksum
/// of the whole file is compared at the end.
pub(crate) struct ShardFile {
    path: PathBuf,
    file: std::fs::File,
    crc: crc32fast::Hasher,
    expected_crc: u32,
    data_len: usize,
    entries: Vec<Entry>,
    metadata: BTreeMap<String, String>,
}

impl ShardFile {
    /// Opens the safetensors file at `path`, which must be `len` bytes long with CRC-32
    /// `crc32`, and parses its header. A header that does not parse is reported as damage
    /// (a checksum mismatch) when the file does not match its checksum, which is then
    /// computed over the whole file.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read; [`Error::Input`] naming `path` if its
    /// length or checksum differ from the manifest's or its header is not valid.
    pub(crate) fn open(path: &Path, len: u64, crc32: u32) -> Result<ShardFile> {
        let io = |e| Error::io(path, e);
        let mut file = std::fs::File::open(path).map_err(io)?;
        let actual = file.metadata().map_err(io)?.len();
        if actual != len {
            return Err(Error::input(
                path,
                None,
                format!("{actual} bytes, the manifest says {len}: truncated or damaged"),
            ));
        }
        if len < 8 {
            return Err(Error::input(
                path,
                None,
                format!("truncated safetensors file ({len} bytes, not even a header length)"),
            ));
        }
        let mut crc = crc32fast::Hasher::new();
        let mut prefix = [0u8; 8];
        file.read_exact(&mut prefix).map_err(io)?;
        crc.update(&prefix);
        let n = header_len(path, prefix, len)?;
        let mut header = vec![0u8; n];
        file.read_exact(&mut header).map_err(io)?;
        crc.update(&header);
        let data_len = (len - 8 - n as u64) as usize;
        let mut shard = ShardFile {
            path: path.to_path_buf(),
            file,
            crc,
            expected_crc: crc32,
            data_len,
            entries: Vec::new(),
            metadata: BTreeMap::new(),
        };
        match parse_header(path, &header, data_len) {
            Ok((entries, metadata)) => {
                (shard.entries, shard.metadata) = (entries, metadata);
                Ok(shard)
            }
            // The checksum is known only at the end: a damaged header is reported as damage.
            Err(e) => Err(shard.verify().err().unwrap_or(e)),
        }
    }

    /// Its tensors, in file order.
    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Its metadata.
    #[cfg(test)]
    pub(crate) fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Reads the data section into `dests`, one buffer per entry in file order, each of
    /// exactly the entry's length, in blocks of at most 4 MiB read straight into place, and
    /// checks the checksum of the whole file. On an error the buffers hold an unspecified
    /// part of the file's (possibly damaged) data.
    ///
    /// # Errors
    /// [`Error::Io`] if reading fails; [`Error::Input`] naming the file if the checksum
    /// differs from the manifest's; [`Error::InvalidArgument`] if `dests` do not fit the
    /// entries (a bug of the caller).
    pub(crate) fn read_into(mut self, dests: Vec<&mut [u8]>) -> Result<()> {
        if dests.len() != self.entries.len() || dests.iter().zip(&self.entries).any(|(d, e)| d.len() != e.end - e.begin)
        {
            return Err(Error::InvalidArgument(format!(
                "{}: the buffers to read into do not fit the tensors of the file",
                self.path.display()
            )));
        }
        for dest in dests {
            for block in dest.chunks_mut(BLOCK) {
                self.file.read_exact(block).map_err(|e| Error::io(&self.path, e))?;
                self.crc.update(block);
            }
        }
        self.finish()
    }

    /// Reads the rest of the file only to check its checksum.
    ///
    /// # Errors
    /// As [`ShardFile::read_into`].
    pub(crate) fn verify(mut self) -> Result<()> {
        let mut block = vec![0u8; BLOCK.min(self.data_len)];
        let mut left = self.data_len;
        while left > 0 {
            let buf = &mut block[..BLOCK.min(left)];
            self.file.read_exact(buf).map_err(|e| Error::io(&self.path, e))?;
            self.crc.update(buf);
            left -= buf.len();
        }
        self.finish()
    }

    fn finish(self) -> Result<()> {
        let crc = self.crc.finalize();
        if crc != self.expected_crc {
            return Err(Error::input(
                &self.path,
                None,
                format!("CRC-32 {crc:08x}, the manifest says {:08x}: damaged", self.expected_crc),
            ));
        }
        Ok(())
    }
}

/// Reads the safetensors file of `f32` tensors at `path` (`len` bytes, CRC-32 `crc32`)
/// through a [`ShardFile`]: the tensors in file order, returned once the whole file
/// matched the checksum.
#[cfg(test)]
fn read_verified(path: &Path, len: u64, crc32: u32) -> Result<(Vec<Tensor>, BTreeMap<String, String>)> {
    let shard = ShardFile::open(path, len, crc32)?;
    let mut tensors = Vec::new();
    for e in shard.entries() {
        if e.dtype != Dtype::F32 {
            return Err(Error::input(path, Some(format!("tensor {:?}", e.name)), not_f32(e)));
        }
        tensors.push(Tensor { name: e.name.clone(), shape: e.shape.clone(), data: vec![0f32; (e.end - e.begin) / 4] });
    }
    let metadata = shard.metadata().clone();
    shard.read_into(tensors.iter_mut().map(|t| super::view::bytes_of_mut(&mut t.data)).collect())?;
    Ok((tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_pads_the_header() {
        let a = Tensor::new("w", vec![2, 3], vec![1.0, -2.5, 3.0, f32::MIN_POSITIVE, 0.0, 1e30]).unwrap();
        let b = Tensor::new("empty", vec![0], vec![]).unwrap();
        let c = Tensor::new("scalar", vec![], vec![7.0]).unwrap();
        let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let bytes = to_bytes(&[(&a).into(), (&b).into(), (&c).into()], &meta);
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(header_len % 8, 0);
        assert_eq!(bytes.len(), 8 + header_len + 4 * 7);
        let (tensors, m) = decode(Path::new("x.safetensors"), &bytes).unwrap();
        assert_eq!(tensors, vec![a, b, c]);
        assert_eq!(m, meta);
    }

    #[test]
    fn f32_files_are_the_format_they_always_were_and_other_dtypes_are_named() {
        let a = Tensor::vector("w", vec![1.0, 2.0]);
        let bytes = to_bytes(&[(&a).into()], &BTreeMap::new());
        let header = br#"{"w":{"data_offsets":[0,8],"dtype":"F32","shape":[2]}}"#;
        assert_eq!(&bytes[8..8 + header.len()], header);
        assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()), header.len().next_multiple_of(8) as u64);

        let x = [1.5f64, -0.0];
        let bytes = to_bytes(&[TensorRef::from_slice("x", vec![1, 2], &x).unwrap()], &BTreeMap::new());
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains(r#""dtype":"F64","shape":[1,2]"#), "{text}");
        assert_eq!(&bytes[bytes.len() - 16..], [1.5f64.to_le_bytes(), (-0.0f64).to_le_bytes()].concat());
        let e = decode(Path::new("x.safetensors"), &bytes).unwrap_err().to_string();
        assert!(e.contains("tensor \"x\"") && e.contains("F64") && e.contains("restore_into"), "{e}");
    }

    #[test]
    fn damage_is_reported_with_the_file() {
        let a = Tensor::new("w", vec![4], vec![1.0; 4]).unwrap();
        let bytes = to_bytes(&[(&a).into()], &BTreeMap::new());
        let p = Path::new("ckpt/rank-3.safetensors");
        for cut in [3, 12, bytes.len() - 1] {
            let e = decode(p, &bytes[..cut]).unwrap_err().to_string();
            assert!(e.contains("rank-3.safetensors"), "{e}");
        }
        let e = decode(p, &bytes[..bytes.len() - 1]).unwrap_err().to_string();
        assert!(e.contains("tensor \"w\""), "{e}");
    }

    #[test]
    fn holes_and_overlaps_are_refused() {
        let a = Tensor::new("a", vec![2], vec![1.0, 2.0]).unwrap();
        let mut bytes = to_bytes(&[(&a).into()], &BTreeMap::new());
        // One more value than the header describes: a hole at the end.
        bytes.extend_from_slice(&3f32.to_le_bytes());
        let e = decode(Path::new("x.safetensors"), &bytes).unwrap_err().to_string();
        assert!(e.contains("hole"), "{e}");
    }

    #[test]
    fn a_file_read_in_blocks_is_checked_and_decoded_as_a_whole() {
        let dir = std::env::temp_dir().join(format!("gang-st-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Over 4 MiB, so that the data arrives in several blocks, a tensor across two.
        let big = Tensor::vector("big", (0..1_500_001).map(|i| i as f32 * 0.5 - 3.0).collect());
        let empty = Tensor::new("empty", vec![0], vec![]).unwrap();
        let small = Tensor::new("small", vec![3], vec![f32::MAX, -0.0, 1e-42]).unwrap();
        let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let bytes = to_bytes(&[(&small).into(), (&empty).into(), (&big).into()], &meta);
        let path = dir.join("rank-0.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let (len, crc) = (bytes.len() as u64, crc32fast::hash(&bytes));

        let (tensors, m) = read_verified(&path, len, crc).unwrap();
        assert_eq!((tensors, m), decode(&path, &bytes).unwrap());

        let e = read_verified(&path, len + 1, crc).unwrap_err().to_string();
        assert!(e.contains("rank-0.safetensors") && e.contains("truncated"), "{e}");
        for at in [3, 20, bytes.len() / 2, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            std::fs::write(&path, &damaged).unwrap();
            let e = read_verified(&path, len, crc).unwrap_err().to_string();
            assert!(
                e.contains("rank-0.safetensors") && (e.contains("CRC-32") || e.contains("header length")),
                "{at}: {e}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
