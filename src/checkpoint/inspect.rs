//! `gang ckpt ls` and `gang ckpt verify`: what a checkpoint directory holds, and whether
//! it would restore. Read-only, for one process (no gang needed).

use super::manifest::{entries, read_latest, Entry, Manifest};
use super::store::verify_shard;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// One directory of a checkpoint store, as [`list`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Directory name (`step-00000040`, or a temporary name).
    pub name: String,
    /// The step.
    pub step: u64,
    /// Whether it is committed and whole: a manifest that reads, and every file it lists
    /// present with its recorded size (checksums are [`verify`]'s job).
    pub complete: bool,
    /// Whether `LATEST` names it.
    pub latest: bool,
    /// World size that saved it, from the manifest.
    pub world_size: Option<usize>,
    /// Bytes of the files in the directory.
    pub bytes: u64,
    /// Why it is not complete.
    pub why_incomplete: Option<String>,
}

/// Lists the checkpoints (and uncommitted leftovers) of the store `dir`, oldest first.
///
/// # Errors
/// [`Error::Io`] if `dir` cannot be read (naming it).
pub fn list(dir: &Path) -> Result<Vec<CheckpointInfo>> {
    std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    let latest = read_latest(dir).ok().flatten().map(|(n, _)| n);
    let mut out = Vec::new();
    for (name, kind) in entries(dir)? {
        let path = dir.join(&name);
        let bytes = dir_bytes(&path);
        let mut info = CheckpointInfo {
            latest: latest.as_deref() == Some(name.as_str()),
            name,
            step: 0,
            complete: false,
            world_size: None,
            bytes,
            why_incomplete: None,
        };
        match kind {
            Entry::Step(s) => {
                info.step = s;
                match Manifest::read(&path) {
                    Ok(m) => {
                        info.world_size = Some(m.world_size);
                        match m.check_sizes(&path) {
                            Ok(()) => info.complete = true,
                            Err(why) => info.why_incomplete = Some(why),
                        }
                    }
                    Err(e) => info.why_incomplete = Some(manifest_problem(e)),
                }
            }
            Entry::Temp(s, a) => {
                info.step = s;
                info.why_incomplete = Some(format!(
                    "not committed: attempt {a} wrote it but its vote failed or a rank died before the vote (removed at the next save)"
                ));
            }
            Entry::Old(s) => {
                info.step = s;
                info.why_incomplete =
                    Some("replaced by a newer checkpoint of the same step (removed at the next save)".into());
            }
        }
        out.push(info);
    }
    Ok(out)
}

/// The verdict of [`verify`] on one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointVerdict {
    /// Directory name.
    pub name: String,
    /// The step.
    pub step: u64,
    /// World size that saved it, from the manifest.
    pub world_size: Option<usize>,
    /// Whether the manifest and every shard (size, CRC-32, safetensors header, metadata)
    /// check out.
    pub ok: bool,
    /// What is wrong, one entry per problem.
    pub problems: Vec<String>,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The store.
    pub dir: PathBuf,
    /// The directory `LATEST` names, if the pointer reads.
    pub latest: Option<String>,
    /// What is wrong with `LATEST` itself (damaged, or naming a missing checkpoint).
    pub latest_problem: Option<String>,
    /// Every directory of the store, oldest first.
    pub checkpoints: Vec<CheckpointVerdict>,
    /// The step a restore would start from (the first sound checkpoint from `LATEST`
    /// backwards), if any.
    pub restorable: Option<u64>,
}

impl VerifyReport {
    /// Whether `LATEST` names a checkpoint that verifies (a restore needs no fallback).
    pub fn is_ok(&self) -> bool {
        self.latest_problem.is_none()
            && self.latest.as_ref().is_some_and(|l| self.checkpoints.iter().any(|c| &c.name == l && c.ok))
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "checkpoints in {}", self.dir.display())?;
        for c in &self.checkpoints {
            let mark = if self.latest.as_deref() == Some(c.name.as_str()) { " (LATEST)" } else { "" };
            let world = c.world_size.map(|w| format!(", {w} rank(s)")).unwrap_or_default();
            writeln!(f, "  {}{mark}: {}{world}", c.name, if c.ok { "ok" } else { "DAMAGED" })?;
            for p in &c.problems {
                writeln!(f, "    - {p}")?;
            }
        }
        if let Some(p) = &self.latest_problem {
            writeln!(f, "  LATEST: {p}")?;
        }
        match self.restorable {
            Some(s) => write!(f, "a restore would start from step {s}"),
            None if self.checkpoints.is_empty() => write!(f, "no checkpoints: a restore would start from scratch"),
            None => write!(f, "no usable checkpoint: a restore would fail"),
        }
    }
}

/// Verifies every checkpoint of the store `dir`: the manifest, and for every shard its
/// size and CRC-32, its safetensors header and its metadata. Reads every byte.
///
/// # Errors
/// [`Error::Io`] if `dir` cannot be read. Damage is reported in the [`VerifyReport`], not
/// as an error.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    let (latest, mut latest_problem) = match read_latest(dir) {
        Ok(Some((name, _))) => (Some(name), None),
        Ok(None) => (None, None),
        Err(why) => (None, Some(why)),
    };
    let mut checkpoints = Vec::new();
    for (name, kind) in entries(dir)? {
        let path = dir.join(&name);
        let (step, problems, world_size) = match kind {
            Entry::Step(s) => {
                let (problems, world) = verify_step(&path);
                (s, problems, world)
            }
            Entry::Temp(s, a) => (s, vec![format!("not committed (attempt {a}): never used by a restore")], None),
            Entry::Old(s) => (s, vec!["replaced by a newer checkpoint of the same step".to_string()], None),
        };
        checkpoints.push(CheckpointVerdict { ok: problems.is_empty(), name, step, world_size, problems });
    }
    let latest_step = latest.as_ref().and_then(|l| checkpoints.iter().find(|c| &c.name == l).map(|c| c.step));
    if latest.is_some() && latest_step.is_none() && latest_problem.is_none() {
        latest_problem = Some(format!("names {}, which is missing", latest.as_deref().unwrap_or_default()));
    }
    let restorable = checkpoints
        .iter()
        .rev()
        .filter(|c| matches!(super::manifest::classify(&c.name), Some(Entry::Step(_))))
        .filter(|c| latest_step.is_none_or(|l| c.step <= l))
        .find(|c| c.ok)
        .map(|c| c.step);
    Ok(VerifyReport { dir: dir.to_path_buf(), latest, latest_problem, checkpoints, restorable })
}

/// Problems of the step directory `path`, and its world size if the manifest reads.
fn verify_step(path: &Path) -> (Vec<String>, Option<usize>) {
    let m = match Manifest::read(path) {
        Ok(m) => m,
        Err(e) => return (vec![manifest_problem(e)], None),
    };
    let problems = (0..m.world_size).filter_map(|r| verify_shard(path, &m, r).err().map(|e| e.to_string())).collect();
    (problems, Some(m.world_size))
}

fn manifest_problem(e: Error) -> String {
    match e {
        Error::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
            format!("{}: no manifest: never committed", path.display())
        }
        other => other.to_string(),
    }
}

/// Total size of the files directly in `dir` (0 if it cannot be read).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}
