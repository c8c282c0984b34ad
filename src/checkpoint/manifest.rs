//! What a checkpoint directory holds: the layout of names, the manifest rank 0 writes after
//! a unanimous vote, the per-rank metadata file, and the checks of a step directory.

use super::{Meta, FORMAT};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Name of the manifest inside a step directory.
pub const MANIFEST: &str = "MANIFEST.json";
/// Name of the pointer to the newest complete checkpoint.
pub const LATEST: &str = "LATEST";

/// The directory name of the checkpoint of `step`.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The name under which the ranks of `attempt` write the checkpoint of `step` before the
/// vote.
pub(crate) fn temp_dir_name(step: u64, attempt: u32) -> String {
    format!("{}.tmp-a{attempt}", step_dir_name(step))
}

/// The tensor file of `rank`.
pub(crate) fn tensor_file(rank: usize) -> String {
    format!("rank-{rank}.safetensors")
}

/// The metadata file of `rank`.
pub(crate) fn meta_file(rank: usize) -> String {
    format!("rank-{rank}.meta.json")
}

/// What a directory entry of a checkpoint store is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// `step-<s>`: a committed checkpoint (if its manifest is whole).
    Step(u64),
    /// `step-<s>.tmp-a<k>`: written by attempt k, not (yet) committed.
    Temp(u64, u32),
    /// `step-<s>.old-a<k>`: a checkpoint being replaced by a new one of the same step.
    Old(u64),
}

/// Classifies a directory name; `None` for names gang did not make.
pub(crate) fn classify(name: &str) -> Option<Entry> {
    let rest = name.strip_prefix("step-")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let step: u64 = rest[..digits].parse().ok()?;
    let suffix = &rest[digits..];
    if suffix.is_empty() {
        Some(Entry::Step(step))
    } else if let Some(a) = suffix.strip_prefix(".tmp-a") {
        Some(Entry::Temp(step, a.parse().ok()?))
    } else if suffix.strip_prefix(".old-a").is_some_and(|a| a.parse::<u32>().is_ok()) {
        Some(Entry::Old(step))
    } else {
        None
    }
}

/// One file of a shard, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the step directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the whole file.
    pub crc32: u32,
}

/// One rank's shard, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// The rank that wrote it.
    pub rank: usize,
    /// Names of the sharded tensors in it (replicated ones are listed in the manifest).
    pub sharded: Vec<String>,
    /// Its files: the tensors (`rank-<r>.safetensors`) and the metadata
    /// (`rank-<r>.meta.json`).
    pub files: Vec<FileEntry>,
}

/// `MANIFEST.json` of a committed checkpoint: written by rank 0 only after every rank voted
/// that its shard is durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `gang-checkpoint/1`.
    pub format: String,
    /// The training step.
    pub step: u64,
    /// Ranks that saved it.
    pub world_size: usize,
    /// Attempt of the gang that saved it.
    pub attempt: u32,
    /// When rank 0 committed it, nanoseconds since the Unix epoch.
    pub created_unix_ns: u128,
    /// Names of the replicated tensors, stored in rank 0's shard only.
    pub replicated: Vec<String>,
    /// One entry per rank, in rank order.
    pub shards: Vec<ShardEntry>,
}

impl Manifest {
    /// Reads and checks the manifest of the step directory `dir`.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read (missing: the checkpoint was never committed);
    /// [`Error::Input`] naming the file if it is torn or inconsistent.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::input(&path, None, format!("torn or damaged manifest: {e}")))?;
        let bad = |detail: String| Err(Error::input(&path, None, detail));
        if m.format != FORMAT {
            return bad(format!("format {:?} is not {FORMAT:?}", m.format));
        }
        if let Some(Entry::Step(s)) = dir.file_name().and_then(|n| n.to_str()).and_then(classify) {
            if s != m.step {
                return bad(format!("says step {} but lives in the directory of step {s}", m.step));
            }
        }
        if m.world_size == 0 || m.shards.len() != m.world_size || m.shards.iter().enumerate().any(|(i, s)| s.rank != i)
        {
            return bad(format!("lists {} shard(s) for a world of {}: damaged", m.shards.len(), m.world_size));
        }
        Ok(m)
    }

    /// Whether any rank saved sharded tensors (which restore only onto the same world size).
    pub fn has_sharded(&self) -> bool {
        self.shards.iter().any(|s| !s.sharded.is_empty())
    }

    /// The file entry `name` of `rank`'s shard.
    pub(crate) fn file(&self, rank: usize, name: &str) -> Option<&FileEntry> {
        self.shards.get(rank)?.files.iter().find(|f| f.name == name)
    }

    /// Checks that every listed file exists with its recorded size (cheap: no reading).
    ///
    /// # Errors
    /// A description of the first problem.
    pub(crate) fn check_sizes(&self, dir: &Path) -> std::result::Result<(), String> {
        for f in self.shards.iter().flat_map(|s| &s.files) {
            let path = dir.join(&f.name);
            match std::fs::metadata(&path) {
                Ok(m) if m.len() == f.bytes => {}
                Ok(m) => return Err(format!("{}: {} bytes, the manifest says {}", path.display(), m.len(), f.bytes)),
                Err(e) => return Err(format!("{}: missing shard ({e})", path.display())),
            }
        }
        Ok(())
    }

    /// Total bytes of the listed files.
    pub fn bytes(&self) -> u64 {
        self.shards.iter().flat_map(|s| &s.files).map(|f| f.bytes).sum()
    }
}

/// `rank-<r>.meta.json`: what one rank saved besides its tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShardMeta {
    pub(crate) format: String,
    pub(crate) step: u64,
    pub(crate) rank: usize,
    pub(crate) world_size: usize,
    pub(crate) attempt: u32,
    pub(crate) replicated: Vec<String>,
    pub(crate) sharded: Vec<String>,
    pub(crate) meta: Meta,
}

/// Reads `path` whole, checking its size and CRC-32 against `entry`.
///
/// # Errors
/// [`Error::Io`] if it cannot be read; [`Error::Input`] naming the file on a size or
/// checksum mismatch.
pub(crate) fn read_checked(path: &Path, entry: &FileEntry) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 != entry.bytes {
        return Err(Error::input(
            path,
            None,
            format!("{} bytes, the manifest says {}: truncated or damaged", bytes.len(), entry.bytes),
        ));
    }
    let crc = crc32fast::hash(&bytes);
    if crc != entry.crc32 {
        return Err(Error::input(
            path,
            None,
            format!("CRC-32 {crc:08x}, the manifest says {:08x}: damaged", entry.crc32),
        ));
    }
    Ok(bytes)
}

/// Creates `path` (and missing parents) owner-only; an existing directory keeps its mode
/// unless `exact` asks for 0o700 anyway.
pub(crate) fn create_private_dir(path: &Path, exact: bool) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(path).map_err(|e| Error::io(path, e))?;
    #[cfg(unix)]
    if exact {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Creates (truncating) an owner-only file.
pub(crate) fn create_private_file(path: &Path) -> Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(|e| Error::io(path, e))
}

/// Makes the entries of `dir` (creations, renames, removals) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    crate::durable::sync_dir(dir)
}

/// Writes `bytes` to `path` owner-only through gang's durable write (a temporary file,
/// fsync, rename, fsync of the directory). Readers see the old content or the new, never a
/// mix.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::durable::AtomicWrite::new().mode(0o600).write_file(path, bytes).map_err(crate::durable::io)
}

/// Reads the `LATEST` pointer of the store `root`: the directory name it names and its
/// step. `Ok(None)` when there is none.
///
/// # Errors
/// A description of a pointer that exists but is damaged.
pub(crate) fn read_latest(root: &Path) -> std::result::Result<Option<(String, u64)>, String> {
    let path = root.join(LATEST);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let name = text.trim();
            match classify(name) {
                Some(Entry::Step(s)) => Ok(Some((name.to_string(), s))),
                _ => Err(format!("{}: {:?} does not name a checkpoint (damaged pointer)", path.display(), name)),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The entries of the store `root` that gang made, sorted by step then name. An absent
/// root has none.
pub(crate) fn entries(root: &Path) -> Result<Vec<(String, Entry)>> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(root, e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|err| Error::io(root, err))?;
        if let Some(name) = e.file_name().to_str() {
            if let Some(kind) = classify(name) {
                out.push((name.to_string(), kind));
            }
        }
    }
    out.sort_by(|a, b| (step_of(a.1), &a.0).cmp(&(step_of(b.1), &b.0)));
    Ok(out)
}

fn step_of(e: Entry) -> u64 {
    match e {
        Entry::Step(s) | Entry::Temp(s, _) | Entry::Old(s) => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified() {
        assert_eq!(classify(&step_dir_name(40)), Some(Entry::Step(40)));
        assert_eq!(classify("step-00000040"), Some(Entry::Step(40)));
        assert_eq!(classify("step-123456789012"), Some(Entry::Step(123_456_789_012)));
        assert_eq!(classify(&temp_dir_name(7, 2)), Some(Entry::Temp(7, 2)));
        assert_eq!(classify("step-00000007.old-a1"), Some(Entry::Old(7)));
        for other in ["LATEST", "step-", "step-x", "step-1.bak", "notes.txt", "step-1.tmp-ax"] {
            assert_eq!(classify(other), None, "{other}");
        }
    }
}
