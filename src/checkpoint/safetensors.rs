//! The safetensors format, written and read by hand (it is small): an 8-byte
//! little-endian header length, a JSON header
//! `{name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`
//! padded with spaces to a multiple of 8 bytes, then the raw little-endian data, offsets
//! counted from the end of the header. Files load with Python's
//! `safetensors.numpy.load_file` and `safetensors.torch.load_file`.

use super::Tensor;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Largest header the reference implementation accepts (100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// Elements converted to bytes per block handed to the sink: 4 MiB, large enough for
/// full-speed writes and few system calls, small enough to stay in the last-level cache
/// between its conversion, its checksum and its write.
const BLOCK: usize = 1 << 20;
/// The JSON header for `tensors` (laid out in order) and `metadata`, padded to 8 bytes.
fn header(tensors: &[&Tensor], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + 4 * t.data.len();
        map.insert(
            t.name.clone(),
            serde_json::json!({ "dtype": "F32", "shape": t.shape, "data_offsets": [offset, end] }),
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
/// passed to `sink` in file order: the header length and header, then the tensor data
/// converted to little-endian in blocks of at most 4 MiB (one reused buffer).
pub(crate) fn encode_blocks<E>(
    tensors: &[&Tensor],
    metadata: &BTreeMap<String, String>,
    mut sink: impl FnMut(&[u8]) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let header = header(tensors, metadata);
    let mut buf = Vec::with_capacity(8 + header.len());
    buf.extend_from_slice(&(header.len() as u64).to_le_bytes());
    buf.extend_from_slice(&header);
    sink(&buf)?;
    buf = vec![0u8; 4 * BLOCK.min(tensors.iter().map(|t| t.data.len()).max().unwrap_or(0))];
    for t in tensors {
        for chunk in t.data.chunks(BLOCK) {
            let out = &mut buf[..4 * chunk.len()];
            // A plain copy on little-endian machines (compiled to wide moves).
            for (b, v) in out.chunks_exact_mut(4).zip(chunk) {
                b.copy_from_slice(&v.to_le_bytes());
            }
            sink(out)?;
        }
    }
    Ok(())
}

/// The bytes of a safetensors file holding `tensors` and `metadata`.
pub(crate) fn to_bytes(tensors: &[&Tensor], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + tensors.iter().map(|t| 4 * t.data.len() + 64).sum::<usize>());
    encode_blocks(tensors, metadata, |b| {
        out.extend_from_slice(b);
        Ok::<_, std::convert::Infallible>(())
    })
    .unwrap_or_else(|never| match never {});
    out
}

/// One tensor's entry in a safetensors header.
struct Entry {
    name: String,
    shape: Vec<usize>,
    /// Byte range in the data section.
    begin: usize,
    end: usize,
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
        if e.dtype != "F32" {
            return Err(bad(loc(), format!("dtype {} is not supported: gang checkpoints hold F32 tensors", e.dtype)));
        }
        let [begin, end] = e.data_offsets;
        let numel = e.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if begin > end || end > data_len || numel.and_then(|n| n.checked_mul(4)) != Some(end - begin) {
            return Err(bad(
                loc(),
                format!(
                    "shape {:?} and data offsets [{begin}, {end}] do not fit each other or the {data_len} data bytes",
                    e.shape
                ),
            ));
        }
        entries.push(Entry { name, shape: e.shape, begin, end });
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

/// Little-endian f32s from `bytes` into `out` (a plain copy on little-endian machines).
fn floats_from_le(bytes: &[u8], out: &mut [f32]) {
    for (v, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *v = f32::from_le_bytes(b.try_into().expect("4 bytes"));
    }
}

/// Parses a whole safetensors file held in `bytes` (read from `path`, named in errors):
/// its tensors in file order and its metadata.
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
    let tensors = entries
        .into_iter()
        .map(|e| {
            let mut values = vec![0f32; (e.end - e.begin) / 4];
            floats_from_le(&data[e.begin..e.end], &mut values);
            Tensor { name: e.name, shape: e.shape, data: values }
        })
        .collect();
    Ok((tensors, metadata))
}

/// Reads the safetensors file at `path`, which must be `len` bytes long with CRC-32
/// `crc32` (its manifest entry), in one pass: 4 MiB blocks go from the file through the
/// checksum into the tensors, without holding the file's bytes. The tensors are returned
/// only once the whole file has matched the checksum.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read; [`Error::Input`] naming `path` if its length
/// or checksum differ from the manifest's, or as [`decode`].
pub(crate) fn read_verified(path: &Path, len: u64, crc32: u32) -> Result<(Vec<Tensor>, BTreeMap<String, String>)> {
    use std::io::Read;
    let io = |e| Error::io(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let actual = file.metadata().map_err(io)?.len();
    if actual != len {
        return Err(Error::input(path, None, format!("{actual} bytes, the manifest says {len}: truncated or damaged")));
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
    // The checksum is known only at the end: a damaged header is reported as damage.
    let data_len = (len - 8 - n as u64) as usize;
    let parsed = parse_header(path, &header, data_len);
    let mut tensors: Vec<Tensor> = match &parsed {
        Ok((entries, _)) => entries
            .iter()
            .map(|e| Tensor { name: e.name.clone(), shape: e.shape.clone(), data: vec![0f32; (e.end - e.begin) / 4] })
            .collect(),
        Err(_) => Vec::new(),
    };
    // Blocks of the data section; tensors tile it and start at multiples of 4 bytes, so
    // no value straddles two blocks.
    let mut block = vec![0u8; (4 * BLOCK).min(data_len)];
    let (mut pos, mut t, mut within) = (0usize, 0usize, 0usize);
    while pos < data_len {
        let take = block.len().min(data_len - pos);
        let buf = &mut block[..take];
        file.read_exact(buf).map_err(io)?;
        crc.update(buf);
        let mut off = 0;
        while off < take && t < tensors.len() {
            let dst = &mut tensors[t].data[within / 4..];
            let n = dst.len().min((take - off) / 4);
            if n == 0 && !dst.is_empty() {
                break; // (less than a value left in the block: not after parse_header's checks)
            }
            floats_from_le(&buf[off..off + 4 * n], &mut dst[..n]);
            off += 4 * n;
            within += 4 * n;
            if within == 4 * tensors[t].data.len() {
                (t, within) = (t + 1, 0);
            }
        }
        pos += take;
    }
    let crc = crc.finalize();
    if crc != crc32 {
        return Err(Error::input(path, None, format!("CRC-32 {crc:08x}, the manifest says {crc32:08x}: damaged")));
    }
    let (_, metadata) = parsed?;
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
        let bytes = to_bytes(&[&a, &b, &c], &meta);
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(header_len % 8, 0);
        assert_eq!(bytes.len(), 8 + header_len + 4 * 7);
        let (tensors, m) = decode(Path::new("x.safetensors"), &bytes).unwrap();
        assert_eq!(tensors, vec![a, b, c]);
        assert_eq!(m, meta);
    }

    #[test]
    fn damage_is_reported_with_the_file() {
        let a = Tensor::new("w", vec![4], vec![1.0; 4]).unwrap();
        let bytes = to_bytes(&[&a], &BTreeMap::new());
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
        let mut bytes = to_bytes(&[&a], &BTreeMap::new());
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
        let bytes = to_bytes(&[&small, &empty, &big], &meta);
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
