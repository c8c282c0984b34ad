//! The output committer: partitions written exactly once, output complete or absent.
//!
//! The discipline of Hadoop's `FileOutputCommitter` (algorithm 1) as Spark uses it:
//!
//! ```text
//! dir/
//!   _temporary/_STAGE                      fingerprint + format of the stage in progress
//!   _temporary/attempt-<a>/part-00003.parquet.r<rank>        a task writing (invisible)
//!   _temporary/committed/part-00003.parquet(.json)           task committed: data + sidecar
//!   part-00003.parquet ...   _SUCCESS                        job committed (manifest)
//! ```
//!
//! - **Begin** ([`OutputCommitter::begin`], collective): rank 0 inspects the directory and
//!   either starts a fresh stage, resumes an unfinished stage with the same fingerprint,
//!   finds the output already committed by this same stage (same fingerprint and format:
//!   nothing is left to do), or refuses; every rank gets the same answer.
//! - **Task commit** ([`OutputCommitter::write_partition`]): a partition is written under
//!   the attempt directory, fsynced, renamed into `committed/`, then its sidecar (rows,
//!   bytes, CRC-32, schema) is renamed beside it. Only data *and* sidecar make a partition
//!   committed; a relaunched gang skips those ([`OutputCommitter::is_committed`]).
//! - **Job commit** ([`OutputCommitter::finish`], collective): after a barrier rank 0 checks
//!   that every partition is committed, moves them into `dir/`, writes the `_SUCCESS`
//!   manifest through gang's durable write ([`gang_protocol::durable`]), and removes
//!   `_temporary`. Every rename into place goes through that module too.
//!
//! A stage that fails leaves nothing in `dir/` but `_temporary` (readers skip `_*` names).
//! Only a crash of rank 0 in the middle of the job commit can leave some part files visible
//! without `_SUCCESS`; relaunching the stage completes the commit.
//!
//! The output directory must be on a file system that every rank sees (checked at begin).

use super::manifest::{schema_json, Manifest, PartStats, Sidecar, SUCCESS};
use super::writer::{open_sink, same_fields, OutputFormat, WrittenFile};
use crate::context::Participant;
use crate::durable::{rename_all, rename_durable, sync_dir};
use crate::error::{Error, Result};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// Directory of work in progress inside the output directory.
pub const TEMPORARY: &str = "_temporary";
const STAGE: &str = "_STAGE";
const COMMITTED: &str = "committed";

/// How every refusal that allowing overwriting would lift ends (see
/// [`overwrite_would_help`]); a job adds the name of its own option.
const ALLOW_OVERWRITING: &str = "allow overwriting";

/// Whether `err` is a refusal of [`OutputCommitter::begin`] that passing `overwrite` would
/// lift (a committed result or an unfinished stage of another stage, or an incomplete
/// output). Jobs use it to name their own option for that (`--overwrite`).
pub fn overwrite_would_help(err: &Error) -> bool {
    matches!(err, Error::Output { detail, .. } if detail.ends_with(ALLOW_OVERWRITING))
}

/// What rank 0 found at begin, as every rank gets it.
#[derive(Debug, Serialize, Deserialize)]
enum Begun {
    /// A fresh stage.
    Fresh,
    /// An unfinished stage with the same fingerprint, resumed.
    Resumed,
    /// The output already committed by the same stage: its manifest.
    Complete(Manifest),
}

/// What `_temporary/_STAGE` records about the stage in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StageRecord {
    fingerprint: String,
    format: String,
}

/// Writes the partitions of one stage into an output directory and commits them.
#[derive(Debug)]
pub struct OutputCommitter {
    dir: PathBuf,
    format: OutputFormat,
    fingerprint: String,
    rank: usize,
    attempt: u32,
    resumed: bool,
    complete: Option<Manifest>,
}

impl OutputCommitter {
    /// Prepares `dir` for a stage (collective: every rank calls it; rank 0 decides and all
    /// ranks get its answer, so they either all proceed or all fail).
    ///
    /// - A new or empty directory: a fresh stage.
    /// - A directory holding the committed result (`_SUCCESS`) of this same stage (same
    ///   `fingerprint` and format): already complete ([`OutputCommitter::already_complete`]),
    ///   nothing is written and [`OutputCommitter::finish`] returns that manifest. This is
    ///   how a relaunched gang whose output was committed just before a rank died, or the
    ///   same command run again, succeeds. With `overwrite` on the first attempt
    ///   (`ctx.attempt() == 0`) the result is replaced instead.
    /// - A committed result of another stage: refused unless `overwrite`, which removes the
    ///   result first.
    /// - An unfinished stage with the same `fingerprint`: resumed (partitions already
    ///   committed are kept; see [`OutputCommitter::is_committed`]). With `overwrite` on the
    ///   first attempt of a gang (`ctx.run_info().attempt == 0`) it is discarded instead; a gang
    ///   relaunched by the launcher (attempt > 0) always resumes.
    /// - An unfinished stage with another fingerprint, or part files without a manifest:
    ///   refused unless `overwrite`, which discards them.
    /// - Files gang did not write: always refused (gang never deletes them).
    ///
    /// # Errors
    /// [`Error::Output`] for a refused or unusable directory (the message says what to
    /// do; [`overwrite_would_help`] tells whether `overwrite` would lift it), including one
    /// that some rank cannot see; [`Error::Io`] from the file system.
    pub fn begin(
        ctx: &impl Participant,
        dir: impl AsRef<Path>,
        format: OutputFormat,
        overwrite: bool,
        fingerprint: &str,
    ) -> Result<OutputCommitter> {
        let dir = dir.as_ref().to_path_buf();
        let attempt = ctx.run_info().attempt;
        let begun: Begun =
            ctx.comm().agree("output begin", || prepare(&dir, format, overwrite, fingerprint, attempt))?;
        // Every rank must see what rank 0 made or found: the output must be on a shared
        // file system.
        let stage_file = match begun {
            Begun::Complete(_) => dir.join(SUCCESS),
            _ => dir.join(TEMPORARY).join(STAGE),
        };
        let seen = ctx.comm().allgather_bytes(&[u8::from(stage_file.is_file())])?;
        let blind: Vec<String> =
            seen.iter().enumerate().filter(|(_, b)| b[0] == 0).map(|(r, _)| r.to_string()).collect();
        if !blind.is_empty() {
            return Err(Error::Output {
                path: dir,
                detail: format!(
                    "rank(s) {} cannot see {} that rank 0 created: the output directory must be on a \
                     file system shared by every rank",
                    blind.join(", "),
                    stage_file.display()
                ),
            });
        }
        let resumed = matches!(begun, Begun::Resumed);
        let complete = match begun {
            Begun::Complete(m) => Some(m),
            _ => None,
        };
        Ok(OutputCommitter {
            dir,
            format,
            fingerprint: fingerprint.to_string(),
            rank: ctx.comm().rank(),
            attempt,
            resumed,
            complete,
        })
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The output format.
    pub fn format(&self) -> OutputFormat {
        self.format
    }

    /// The stage's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether an unfinished stage with the same fingerprint was found and resumed.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The manifest of the output when this same stage had committed it already (see
    /// [`OutputCommitter::begin`]): every partition counts as committed, nothing is
    /// written, and [`OutputCommitter::finish`] returns it.
    pub fn already_complete(&self) -> Option<&Manifest> {
        self.complete.as_ref()
    }

    /// File name of partition `id` in the output directory: `part-00003.parquet`.
    pub fn part_name(&self, id: usize) -> String {
        format!("part-{id:05}.{}", self.format.extension())
    }

    fn committed_dir(&self) -> PathBuf {
        self.dir.join(TEMPORARY).join(COMMITTED)
    }

    fn attempt_dir(&self) -> PathBuf {
        self.dir.join(TEMPORARY).join(format!("attempt-{}", self.attempt))
    }

    fn sidecar_path(&self, id: usize) -> PathBuf {
        self.committed_dir().join(format!("{}.json", self.part_name(id)))
    }

    /// Where the data of committed partition `id` is now: in `committed/`, or already moved
    /// into the output directory by an interrupted job commit.
    fn committed_data(&self, id: usize) -> Option<PathBuf> {
        let name = self.part_name(id);
        [self.committed_dir().join(&name), self.dir.join(&name)].into_iter().find(|p| p.is_file())
    }

    /// The stats of partition `id` if it is committed (data and sidecar both present).
    ///
    /// # Errors
    /// [`Error::Output`] if the sidecar exists but cannot be parsed.
    pub fn committed_stats(&self, id: usize) -> Result<Option<PartStats>> {
        if let Some(m) = &self.complete {
            return Ok(m.partitions.iter().find(|p| p.id == id).cloned());
        }
        let side = self.sidecar_path(id);
        if !side.is_file() || self.committed_data(id).is_none() {
            return Ok(None);
        }
        Ok(Some(read_json::<Sidecar>(&side)?.stats))
    }

    /// Whether partition `id` is committed (a relaunched stage skips it).
    pub fn is_committed(&self, id: usize) -> bool {
        matches!(self.committed_stats(id), Ok(Some(_)))
    }

    /// Writes partition `id` from `batches` (each of schema `schema`) and commits it:
    /// temporary attempt file, fsync, rename into `committed/`, then the sidecar
    /// ([`OutputCommitter::write_data`], then [`WrittenPartition::commit`]).
    ///
    /// An error from `batches` is returned unchanged (the caller names file, partition and
    /// rank); the temporary file is removed.
    ///
    /// # Errors
    /// Errors of `batches`; [`Error::InvalidArgument`] if a batch has another schema or
    /// the output is [already complete](OutputCommitter::already_complete); writer and I/O
    /// errors.
    pub fn write_partition<I>(&self, id: usize, schema: &SchemaRef, batches: I) -> Result<PartStats>
    where
        I: IntoIterator<Item = Result<RecordBatch>>,
    {
        self.write_data(id, schema, batches)?.commit()
    }

    /// Writes the data of partition `id` from `batches` into its temporary attempt file and
    /// starts the file's write-back, without waiting for the disk: the partition is not
    /// committed until [`WrittenPartition::commit`] (which may run on another thread, so
    /// that the rank encodes its next partition while the disk takes this one).
    ///
    /// # Errors
    /// As [`OutputCommitter::write_partition`].
    pub fn write_data<I>(&self, id: usize, schema: &SchemaRef, batches: I) -> Result<WrittenPartition>
    where
        I: IntoIterator<Item = Result<RecordBatch>>,
    {
        if self.complete.is_some() {
            return Err(Error::InvalidArgument(format!(
                "partition {id}: {} already holds the committed output of this stage; nothing is left to write \
                 (skip the partitions that is_committed reports)",
                self.dir.display()
            )));
        }
        let name = self.part_name(id);
        let attempt_dir = self.attempt_dir();
        let tmp_data = attempt_dir.join(format!("{name}.r{}", self.rank));
        let (rows, file) = match write_file(self.format, &tmp_data, schema, batches, id) {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp_data);
                return Err(e);
            }
        };
        let digest = file.digest();
        let stats =
            PartStats { id, file: name.clone(), rows, bytes: digest.bytes, crc32: digest.crc32, rank: self.rank };
        Ok(WrittenPartition {
            file: Some(file),
            data: self.committed_dir().join(&name),
            sidecar_path: self.sidecar_path(id),
            sidecar: Sidecar { stats, schema: schema_json(schema) },
        })
    }

    /// Commits the job (collective): after a barrier, rank 0 checks that partitions
    /// `0..partitions` are all committed, moves them into the output directory, writes the
    /// `_SUCCESS` manifest and removes `_temporary`. Every rank returns the manifest. An
    /// output that was [already complete](OutputCommitter::already_complete) is left as it
    /// is and its manifest returned.
    ///
    /// # Errors
    /// [`Error::Output`] if a partition is missing or the partitions' schemas differ (the
    /// output stays invisible); I/O errors; communication errors if a peer failed.
    pub fn finish(self, ctx: &impl Participant, partitions: usize) -> Result<Manifest> {
        ctx.comm().barrier()?;
        if let Some(m) = self.complete {
            return Ok(m);
        }
        ctx.comm().agree("output commit", || self.commit_job(partitions))
    }

    fn commit_job(&self, partitions: usize) -> Result<Manifest> {
        let mut parts = Vec::with_capacity(partitions);
        let mut moves = Vec::with_capacity(partitions);
        let mut schema: Option<(usize, serde_json::Value)> = None;
        for id in 0..partitions {
            let side_path = self.sidecar_path(id);
            let (Some(data), true) = (self.committed_data(id), side_path.is_file()) else {
                return Err(Error::Output {
                    path: self.dir.clone(),
                    detail: format!(
                        "partition {id} of {partitions} was never committed ({} is missing); the stage \
                         did not finish, run it again to complete it",
                        side_path.display()
                    ),
                });
            };
            let side: Sidecar = read_json(&side_path)?;
            match &schema {
                None => schema = Some((id, side.schema.clone())),
                Some((first, s)) if *s != side.schema => {
                    return Err(Error::Output {
                        path: self.dir.clone(),
                        detail: format!(
                            "partition {id} has schema {} but partition {first} has {s}: every partition \
                             of a stage must have the same schema",
                            side.schema
                        ),
                    })
                }
                Some(_) => {}
            }
            let len = fs::metadata(&data).map_err(|e| Error::io(&data, e))?.len();
            if len != side.stats.bytes {
                return Err(Error::Output {
                    path: data,
                    detail: format!("{len} bytes, but {} were committed: the file was damaged", side.stats.bytes),
                });
            }
            moves.push(data);
            parts.push(side.stats);
        }
        // Only once every partition checked out does anything become visible.
        let targets: Vec<PathBuf> = parts.iter().map(|p| self.dir.join(&p.file)).collect();
        let pending: Vec<(&Path, &Path)> =
            moves.iter().zip(&targets).filter(|(d, v)| d != v).map(|(d, v)| (d.as_path(), v.as_path())).collect();
        if pending.is_empty() {
            // Moved by an interrupted commit, perhaps not durably yet.
            sync_dir(&self.dir)?;
        }
        rename_all(pending)?;
        let manifest = Manifest {
            version: 1,
            fingerprint: self.fingerprint.clone(),
            format: self.format.to_string(),
            total_rows: parts.iter().map(|p| p.rows).sum(),
            total_bytes: parts.iter().map(|p| p.bytes).sum(),
            partitions: parts,
            schema: schema.map(|(_, s)| s).unwrap_or(serde_json::Value::Null),
            committed_unix_ns: gang_protocol::now_unix_ns(),
        };
        write_json_durably(&self.dir.join(SUCCESS), &manifest)?;
        let temporary = self.dir.join(TEMPORARY);
        fs::remove_dir_all(&temporary).map_err(|e| Error::io(&temporary, e))?;
        sync_dir(&self.dir)?;
        Ok(manifest)
    }
}

/// A partition whose data is written to its temporary attempt file but not yet durable nor
/// committed ([`OutputCommitter::write_data`]). Dropped without [`WrittenPartition::commit`],
/// its file is removed.
#[derive(Debug)]
pub struct WrittenPartition {
    /// `None` once committed or removed.
    file: Option<WrittenFile>,
    data: PathBuf,
    sidecar_path: PathBuf,
    sidecar: Sidecar,
}

impl WrittenPartition {
    /// Rows, bytes and checksum of the partition as written.
    pub fn stats(&self) -> &PartStats {
        &self.sidecar.stats
    }

    /// Commits the partition: fsync of its data, rename into `committed/`, then the sidecar
    /// that makes it committed, each durable before the next.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file the disk did not take; the partition is then not
    /// committed (a relaunched stage writes it again).
    pub fn commit(mut self) -> Result<PartStats> {
        let file = self.file.take().expect("a written partition commits once");
        let tmp = file.path().to_path_buf();
        let committed = file.sync().and_then(|_| rename_durable(&tmp, &self.data));
        if let Err(e) = committed {
            let _ = fs::remove_file(&tmp);
            return Err(naming_partition(e, &self.data));
        }
        // The data first, durably; only then the sidecar that makes it committed.
        write_json_durably(&self.sidecar_path, &self.sidecar).map_err(|e| naming_partition(e, &self.data))?;
        Ok(self.sidecar.stats.clone())
    }
}

/// A failed step of a partition's commit as an error that names the partition, also when
/// the step that failed was about its directory or its sidecar (an fsync of `committed/`).
fn naming_partition(e: Error, data: &Path) -> Error {
    match e {
        Error::Io { path, source } if path != data => {
            Error::io(data, std::io::Error::new(source.kind(), format!("not committed: {}: {source}", path.display())))
        }
        other => other,
    }
}

impl Drop for WrittenPartition {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            let _ = fs::remove_file(file.path());
        }
    }
}

/// Rank 0's inspection and preparation of the output directory.
fn prepare(dir: &Path, format: OutputFormat, overwrite: bool, fingerprint: &str, attempt: u32) -> Result<Begun> {
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(output(dir, "is a file, not a directory; give a directory path for the output"));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        Err(e) => return Err(Error::io(dir, e)),
    }
    let mut foreign = Vec::new();
    let mut parts = 0usize;
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let name = entry.map_err(|e| Error::io(dir, e))?.file_name().to_string_lossy().into_owned();
        if is_gang_part(&name) {
            parts += 1;
        } else if name != SUCCESS && name != TEMPORARY && !name.starts_with('.') && !is_gang_sidecar(&name) {
            foreign.push(name);
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        let shown: Vec<&str> = foreign.iter().take(5).map(String::as_str).collect();
        return Err(output(
            dir,
            &format!(
                "holds {} file(s) gang did not write ({}{}); gang writes only into a new or empty \
                 directory or its own output, and never deletes other files, even when allowed to \
                 overwrite: choose another output directory",
                foreign.len(),
                shown.join(", "),
                if foreign.len() > shown.len() { ", ..." } else { "" }
            ),
        ));
    }
    let temporary = dir.join(TEMPORARY);
    let stage_path = temporary.join(STAGE);
    let stage: Option<std::result::Result<StageRecord, Error>> = stage_path.is_file().then(|| read_json(&stage_path));
    let wanted = StageRecord { fingerprint: fingerprint.to_string(), format: format.to_string() };
    let same_stage = matches!(&stage, Some(Ok(s)) if *s == wanted);
    if dir.join(SUCCESS).exists() {
        let committed = Manifest::read(dir);
        let same_result =
            matches!(&committed, Ok(m) if m.fingerprint == wanted.fingerprint && m.format == wanted.format);
        if same_result && !(overwrite && attempt == 0) {
            // Committed by this very stage: a relaunch after the job commit, or the same
            // stage run again. What an interrupted job commit left in progress goes.
            if temporary.exists() {
                fs::remove_dir_all(&temporary).map_err(|e| Error::io(&temporary, e))?;
                sync_dir(dir)?;
            }
            return committed.map(Begun::Complete);
        }
        if !overwrite {
            let what = match &committed {
                Ok(m) => format!(
                    "already holds a committed result of a different stage (_SUCCESS of {} writing {}; this stage \
                     is {} writing {})",
                    m.fingerprint, m.format, wanted.fingerprint, wanted.format
                ),
                Err(e) => format!("already holds a committed result (_SUCCESS) that gang cannot read ({e})"),
            };
            return Err(output(dir, &format!("{what}; remove it or {ALLOW_OVERWRITING}")));
        }
        clear(dir)?;
    } else if same_stage && !(overwrite && attempt == 0) {
        // Resume: in-flight files of dead attempts go; committed partitions stay.
        for entry in fs::read_dir(&temporary).map_err(|e| Error::io(&temporary, e))? {
            let path = entry.map_err(|e| Error::io(&temporary, e))?.path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("attempt-")) {
                fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        make_dir(&temporary.join(format!("attempt-{attempt}")))?;
        sync_dir(&temporary)?;
        return Ok(Begun::Resumed);
    } else if let Some(found) = &stage {
        if !overwrite && !same_stage {
            let what = match found {
                Ok(s) => format!(
                    "holds an unfinished stage of another job (fingerprint {}, format {}; this stage is {} \
                     writing {})",
                    s.fingerprint, s.format, wanted.fingerprint, wanted.format
                ),
                Err(e) => format!("holds an unfinished stage gang cannot read ({e})"),
            };
            return Err(output(dir, &format!("{what}; remove it or {ALLOW_OVERWRITING}")));
        }
        clear(dir)?;
    } else if parts > 0 {
        if !overwrite {
            return Err(output(
                dir,
                &format!(
                    "holds {parts} part file(s) but no _SUCCESS manifest (an incomplete output); remove them or \
                     {ALLOW_OVERWRITING}"
                ),
            ));
        }
        clear(dir)?;
    } else if temporary.exists() {
        // A stage that died before recording itself.
        fs::remove_dir_all(&temporary).map_err(|e| Error::io(&temporary, e))?;
    }
    make_dir(&temporary)?;
    make_dir(&temporary.join(COMMITTED))?;
    make_dir(&temporary.join(format!("attempt-{attempt}")))?;
    write_json_durably(&stage_path, &wanted)?;
    sync_dir(dir)?;
    Ok(Begun::Fresh)
}

/// Removes what gang wrote in `dir`: the manifest first (so that an interrupted clear never
/// leaves a manifest naming missing files), then part files and `_temporary`.
fn clear(dir: &Path) -> Result<()> {
    let success = dir.join(SUCCESS);
    if success.exists() {
        fs::remove_file(&success).map_err(|e| Error::io(&success, e))?;
        sync_dir(dir)?;
    }
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if is_gang_part(&name) || is_gang_sidecar(&name) {
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        } else if name == TEMPORARY {
            fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    sync_dir(dir)
}

/// `_gang_*`: what a job adds beside its committed output (e.g. `gang gen`'s true model);
/// gang's own, so replaced with the output on `--overwrite`.
pub(crate) const SIDECAR_PREFIX: &str = "_gang_";

fn is_gang_sidecar(name: &str) -> bool {
    name.starts_with(SIDECAR_PREFIX)
}

/// `part-NNNNN.<ext>` with one of gang's output extensions.
fn is_gang_part(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("part-") else { return false };
    let Some((digits, ext)) = rest.split_once('.') else { return false };
    digits.len() >= 5 && digits.bytes().all(|b| b.is_ascii_digit()) && ["parquet", "arrow", "h5"].contains(&ext)
}

fn write_file<I>(
    format: OutputFormat,
    path: &Path,
    schema: &SchemaRef,
    batches: I,
    id: usize,
) -> Result<(u64, WrittenFile)>
where
    I: IntoIterator<Item = Result<RecordBatch>>,
{
    let mut sink = open_sink(format, path, schema)?;
    let mut rows = 0u64;
    for (i, batch) in batches.into_iter().enumerate() {
        let batch = batch?;
        if !same_fields(batch.schema_ref(), schema) {
            return Err(Error::InvalidArgument(format!(
                "batch {i} of output partition {id} has schema {} but the partition's schema is {}: \
                 every batch of a stage must have one schema",
                schema_json(batch.schema_ref()),
                schema_json(schema)
            )));
        }
        sink.write(&batch)?;
        rows += batch.num_rows() as u64;
    }
    Ok((rows, sink.complete()?))
}

fn output(dir: &Path, detail: &str) -> Error {
    Error::Output { path: dir.to_path_buf(), detail: detail.to_string() }
}

fn make_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| Error::io(path, e))
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| output(path, &format!("not a record gang wrote: {e}")))
}

/// Writes `value` as JSON to `path` through gang's durable write.
fn write_json_durably<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(Error::external)?;
    crate::durable::write_file(path, &text)
}

/// The result of a decision rank 0 took, as every rank sees it.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_are_recognised() {
        assert!(is_gang_part("part-00003.parquet"));
        assert!(is_gang_part("part-123456.arrow"));
        assert!(!is_gang_part("part-0003.parquet"));
        assert!(!is_gang_part("part-00000-5b1c.snappy.parquet"));
        assert!(!is_gang_part("data.parquet"));
    }
}
