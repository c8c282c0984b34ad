//! The safetensors format, written and read by hand (it is small): an 8-byte
//! little-endian header length, a JSON header
//! `{name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`
//! padded with spaces to a multiple of 8 bytes, then the raw little-endian data, offsets
//! counted from the end of the header. Files load with Python's
//! `safetensors.numpy.load_file` and `safetensors.torch.load_file`.

use super::Tensor;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::io::Write;
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

/// Writes `tensors` and `metadata` in safetensors format to `w`.
pub(crate) fn encode<W: Write>(
    w: &mut W,
    tensors: &[&Tensor],
    metadata: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    encode_blocks(tensors, metadata, |b| w.write_all(b))
}

/// The bytes of a safetensors file holding `tensors` and `metadata`.
pub(crate) fn to_bytes(tensors: &[&Tensor], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + tensors.iter().map(|t| 4 * t.data.len() + 64).sum::<usize>());
    encode(&mut out, tensors, metadata).expect("writing to a Vec does not fail");
    out
}

/// Parses a whole safetensors file held in `bytes` (read from `path`, named in errors):
/// its tensors in file order and its metadata.
///
/// # Errors
/// [`Error::Input`] naming `path` when the file is truncated, the header is not valid, or a
/// tensor is not `F32` or does not fit the data.
pub(crate) fn decode(path: &Path, bytes: &[u8]) -> Result<(Vec<Tensor>, BTreeMap<String, String>)> {
    let bad = |location: Option<String>, detail: String| Error::input(path, location, detail);
    if bytes.len() < 8 {
        return Err(bad(None, format!("truncated safetensors file ({} bytes, not even a header length)", bytes.len())));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let rest = (bytes.len() - 8) as u64;
    if header_len > MAX_HEADER || header_len > rest {
        return Err(bad(
            None,
            format!("safetensors header length {header_len} does not fit the file ({rest} bytes after it): truncated or damaged"),
        ));
    }
    let header_end = 8 + header_len as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..header_end])
        .map_err(|e| bad(Some("header".into()), format!("the safetensors header is not a JSON object: {e}")))?;
    let data = &bytes[header_end..];
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::new();
    for (name, entry) in header {
        if name == "__metadata__" {
            metadata = serde_json::from_value(entry)
                .map_err(|e| bad(Some("__metadata__".into()), format!("metadata is not a map of strings: {e}")))?;
            continue;
        }
        let loc = || Some(format!("tensor {name:?}"));
        #[derive(serde::Deserialize)]
        struct Entry {
            dtype: String,
            shape: Vec<usize>,
            data_offsets: [usize; 2],
        }
        let e: Entry = serde_json::from_value(entry).map_err(|e| bad(loc(), format!("bad header entry: {e}")))?;
        if e.dtype != "F32" {
            return Err(bad(loc(), format!("dtype {} is not supported: gang checkpoints hold F32 tensors", e.dtype)));
        }
        let [begin, end] = e.data_offsets;
        let numel = e.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if begin > end || end > data.len() || numel.and_then(|n| n.checked_mul(4)) != Some(end - begin) {
            return Err(bad(
                loc(),
                format!(
                    "shape {:?} and data offsets [{begin}, {end}] do not fit each other or the {} data bytes",
                    e.shape,
                    data.len()
                ),
            ));
        }
        let values =
            data[begin..end].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        tensors.push((begin, Tensor { name, shape: e.shape, data: values }));
    }
    tensors.sort_by_key(|(begin, _)| *begin);
    Ok((tensors.into_iter().map(|(_, t)| t).collect(), metadata))
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
}
