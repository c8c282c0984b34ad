//! Partition planning: finding the input files, checking that they agree on a schema, and
//! cutting them into [`Partition`]s balanced across the ranks of a gang.
//!
//! Discovery reads metadata only (Parquet footers, Arrow IPC footers, HDF5 shapes). The
//! assignment of partitions to ranks ([`PartitionPlan::assign`]) is a pure function of the
//! plan and the world size, so every rank computes the same answer on its own.

use super::format::{driver, FileInfo};
pub use super::format::{Hdf5TwoD, PlanOptions};
use super::{FileFormat, Partition, Slice};
use crate::error::{Error, Result};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One input as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Input {
    /// A Parquet file, or a directory of Parquet files (Hive-style `key=value/`
    /// subdirectories included).
    Parquet(PathBuf),
    /// An Arrow IPC file (`.arrow`, `.ipc`, `.feather` v2).
    Ipc(PathBuf),
    /// An HDF5 file and the datasets to read as columns (empty: every 1-D or 2-D numeric
    /// dataset at the root, sorted by name).
    Hdf5 {
        /// The file.
        path: PathBuf,
        /// Dataset names, relative to the root group.
        datasets: Vec<String>,
    },
}

impl Input {
    /// Parses `data.parquet`, `dir/`, `x.arrow`, `x.h5` or `x.h5:ds1,ds2`.
    ///
    /// The format comes from the extension (`.parquet`/`.pq`, `.arrow`/`.ipc`/`.feather`,
    /// `.h5`/`.hdf5`); a directory is a Parquet dataset.
    ///
    /// # Errors
    /// [`Error::Input`] for an empty spec or an unknown extension.
    pub fn parse(spec: &str) -> Result<Input> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(Error::InvalidArgument("empty input path".into()));
        }
        if let Some((file, list)) = spec.rsplit_once(':') {
            if matches!(format_of(Path::new(file)), Some(FileFormat::Hdf5)) {
                let datasets = list
                    .split(',')
                    .map(|d| d.trim().trim_start_matches('/').to_string())
                    .filter(|d| !d.is_empty())
                    .collect();
                return Ok(Input::Hdf5 { path: PathBuf::from(file), datasets });
            }
        }
        let path = PathBuf::from(spec);
        match format_of(&path) {
            Some(FileFormat::Parquet) => Ok(Input::Parquet(path)),
            Some(FileFormat::Ipc) => Ok(Input::Ipc(path)),
            Some(FileFormat::Hdf5) => Ok(Input::Hdf5 { path, datasets: Vec::new() }),
            None if path.is_dir() => Ok(Input::Parquet(path)),
            None if std::fs::symlink_metadata(&path).is_err() => Err(does_not_exist(&path)),
            None => Err(Error::input(
                path,
                None,
                "unknown input format: expected a directory or a file ending in .parquet/.pq, \
                 .arrow/.ipc/.feather or .h5/.hdf5 (HDF5 datasets as file.h5:ds1,ds2)",
            )),
        }
    }

    /// The file or directory.
    pub fn path(&self) -> &Path {
        match self {
            Input::Parquet(p) | Input::Ipc(p) => p,
            Input::Hdf5 { path, .. } => path,
        }
    }
}

/// The error for an input path that is not there, before its name is judged.
fn does_not_exist(path: &Path) -> Error {
    Error::input(path, None, "does not exist: check the path (inputs are read by every rank, from the same path)")
}

/// The format a file name says it has.
pub(crate) fn format_of(path: &Path) -> Option<FileFormat> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "parquet" | "pq" => Some(FileFormat::Parquet),
        "arrow" | "ipc" | "feather" => Some(FileFormat::Ipc),
        "h5" | "hdf5" => Some(FileFormat::Hdf5),
        _ => None,
    }
}

/// The partitions of a dataset and the schema of the batches read from them.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionPlan {
    /// Every partition, `partitions[i].id == i`, in file order.
    pub partitions: Vec<Partition>,
    /// The schema of every batch: the projected file columns, then Hive keys as Utf8
    /// columns (or the order of [`PlanOptions::columns`] when given).
    pub schema: SchemaRef,
}

/// A file found under an input, with its Hive keys.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    path: PathBuf,
    format: FileFormat,
    hive: Vec<(String, String)>,
    datasets: Vec<String>,
}

impl PartitionPlan {
    /// Finds the files of `inputs`, checks their schemas, and cuts them into partitions.
    ///
    /// Directories are walked recursively in name order; files and directories whose name
    /// starts with `_` or `.` (`_SUCCESS`, `_temporary/`, `.part-0.parquet.crc`) are
    /// skipped; `key=value` directory names become Utf8 columns.
    ///
    /// # Errors
    /// [`Error::Input`] for an unreadable file, a missing column or dataset, or no data
    /// file at all; [`Error::SchemaMismatch`] when two files disagree on a column.
    pub fn discover(inputs: &[Input], opts: &PlanOptions) -> Result<PartitionPlan> {
        if inputs.is_empty() {
            return Err(Error::InvalidArgument("no input given".into()));
        }
        if opts.target_rows == 0 || opts.batch_size == 0 {
            return Err(Error::InvalidArgument("target_rows and batch_size must be at least 1".into()));
        }
        let mut files = Vec::new();
        for input in inputs {
            files.extend(find_files(input)?);
        }
        let mut infos = Vec::with_capacity(files.len());
        for f in &files {
            infos.push(driver(f.format, &f.path)?.file_info(&f.path, &f.datasets, opts)?);
        }
        let schema = check_schemas(&files, &infos, opts.columns.as_deref())?;
        let mut partitions = cut(&files, &infos, opts, None)?;
        let ranks = opts.ranks.max(1) as u64;
        let total: u64 = partitions.iter().map(|p| p.rows).sum();
        let share = total.div_ceil(ranks);
        let largest = partitions.iter().map(|p| p.rows).max().unwrap_or(0);
        if ranks > 1 && total > 0 && ((partitions.len() as u64) < ranks || largest > 2 * share) {
            // Cut row groups at multiples of `at` rows (counted over the whole dataset), then
            // halve `at` until the longest-first assignment gives every rank its share
            // within 10%: deterministic, and each row in exactly one partition.
            let mut at = share.max(1);
            for _ in 0..8 {
                partitions = cut(&files, &infos, opts, Some(at))?;
                let plan = PartitionPlan { partitions: partitions.clone(), schema: schema.clone() };
                let loads = plan
                    .assign(ranks as usize)
                    .iter()
                    .map(|ids| ids.iter().map(|&i| partitions[i].rows).sum::<u64>())
                    .max();
                if loads.unwrap_or(0) <= share + share / 10 || at <= MIN_CUT_ROWS {
                    break;
                }
                at = (at / 2).max(MIN_CUT_ROWS);
            }
        }
        Ok(PartitionPlan { partitions, schema })
    }

    /// Rank 0 discovers the plan and broadcasts it; every rank returns the same plan, or
    /// the same error (a failure on rank 0 is broadcast too, so no rank waits forever).
    ///
    /// # Errors
    /// As [`PartitionPlan::discover`] (on every rank), and communication errors.
    pub fn discover_on_root(comm: &crate::Comm, inputs: &[Input], opts: &PlanOptions) -> Result<PartitionPlan> {
        let mut plan = None;
        let opts = PlanOptions { ranks: opts.ranks.max(comm.size()), ..opts.clone() };
        let bytes = comm.agree_bytes("plan", || {
            let p = PartitionPlan::discover(inputs, &opts)?;
            let b = p.to_bytes()?;
            plan = Some(p);
            Ok(b)
        })?;
        match plan {
            Some(p) => Ok(p),
            None => PartitionPlan::from_bytes(&bytes),
        }
    }

    /// Partition ids per rank: `assign(world)[r]` is rank r's list, sorted by id.
    ///
    /// Balanced by rows: partitions go, largest first (ties by id), to the rank with the
    /// fewest rows so far (ties by lower rank). Deterministic: the same plan and world give
    /// the same assignment on every rank.
    ///
    /// # Panics
    /// If `world` is 0.
    pub fn assign(&self, world: usize) -> Vec<Vec<usize>> {
        assert!(world > 0, "a gang has at least one rank");
        let mut order: Vec<&Partition> = self.partitions.iter().collect();
        order.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.id.cmp(&b.id)));
        let mut load = vec![0u64; world];
        let mut out = vec![Vec::new(); world];
        for p in order {
            // Least-loaded rank; `min_by_key` returns the first (lowest) of equal keys.
            let r = (0..world).min_by_key(|&r| load[r]).expect("world > 0");
            load[r] += p.rows;
            out[r].push(p.id);
        }
        for ids in &mut out {
            ids.sort_unstable();
        }
        out
    }

    /// The partitions of `rank` in a gang of `world` ranks, by id.
    ///
    /// # Panics
    /// If `rank >= world`.
    pub fn for_rank(&self, rank: usize, world: usize) -> Vec<&Partition> {
        assert!(rank < world, "rank {rank} is not in a gang of {world}");
        self.assign(world).swap_remove(rank).into_iter().map(|i| &self.partitions[i]).collect()
    }

    /// Total rows over all partitions.
    pub fn total_rows(&self) -> u64 {
        self.partitions.iter().map(|p| p.rows).sum()
    }

    /// Serializes the plan (partitions as JSON, the schema as an Arrow IPC schema message).
    ///
    /// # Errors
    /// [`Error::Arrow`] if the schema cannot be encoded.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(&self.partitions).map_err(Error::external)?;
        let mut schema = Vec::new();
        {
            let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut schema, &self.schema)?;
            w.finish()?;
        }
        let mut out = Vec::with_capacity(PLAN_MAGIC.len() + 16 + json.len() + schema.len());
        out.extend_from_slice(PLAN_MAGIC);
        for part in [&json, &schema] {
            out.extend_from_slice(&(part.len() as u64).to_le_bytes());
            out.extend_from_slice(part);
        }
        Ok(out)
    }

    /// The inverse of [`PartitionPlan::to_bytes`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bytes that are not a plan.
    pub fn from_bytes(bytes: &[u8]) -> Result<PartitionPlan> {
        let bad = |what: &str| Error::InvalidArgument(format!("not a serialized partition plan: {what}"));
        let mut rest = bytes.strip_prefix(PLAN_MAGIC).ok_or_else(|| bad("wrong magic"))?;
        let mut parts = [&[][..]; 2];
        for part in &mut parts {
            if rest.len() < 8 {
                return Err(bad("truncated"));
            }
            let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
            let len = usize::try_from(len).map_err(|_| bad("length"))?;
            if rest.len() - 8 < len {
                return Err(bad("truncated"));
            }
            *part = &rest[8..8 + len];
            rest = &rest[8 + len..];
        }
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let partitions: Vec<Partition> = serde_json::from_slice(parts[0]).map_err(|e| bad(&e.to_string()))?;
        let reader = arrow_ipc::reader::StreamReader::try_new(parts[1], None).map_err(|e| bad(&e.to_string()))?;
        Ok(PartitionPlan { partitions, schema: reader.schema() })
    }
}

const PLAN_MAGIC: &[u8] = b"GANGPLAN1";

/// Row groups are not cut into ranges shorter than this to balance a plan.
const MIN_CUT_ROWS: u64 = 1024;

/// The partitions of `files`: consecutive pieces grouped to about `opts.target_rows`, and,
/// with `at`, pieces longer than `at` rows cut where the dataset's row count crosses a
/// multiple of `at` (snapped to the nearest page boundary when the file has a page index),
/// shorter ones grouped to about `at` at most.
fn cut(files: &[Found], infos: &[FileInfo], opts: &PlanOptions, at: Option<u64>) -> Result<Vec<Partition>> {
    let target = at.map_or(opts.target_rows, |a| a.min(opts.target_rows));
    let mut partitions = Vec::new();
    let mut offset = 0u64; // rows of the dataset before the current piece
    for (f, info) in files.iter().zip(infos) {
        let make = |slice: Slice, rows: u64, bytes: u64| Partition {
            id: 0,
            file: f.path.clone(),
            format: f.format,
            slice,
            rows,
            bytes,
            hive: f.hive.clone(),
            datasets: info.datasets.clone(),
        };
        match f.format {
            FileFormat::Parquet | FileFormat::Ipc => {
                let mut run_start = 0usize; // first piece of the run of uncut pieces
                let flush = |partitions: &mut Vec<Partition>, run: std::ops::Range<usize>| {
                    let rows: Vec<u64> = info.pieces[run.clone()].iter().map(|p| p.0).collect();
                    for r in group_pieces(&rows, target) {
                        let r = (r.start + run.start)..(r.end + run.start);
                        let (n, b) = info.pieces[r.clone()].iter().fold((0, 0), |a, p| (a.0 + p.0, a.1 + p.1));
                        let slice =
                            if f.format == FileFormat::Parquet { Slice::RowGroups(r) } else { Slice::Batches(r) };
                        partitions.push(make(slice, n, b));
                    }
                };
                for (i, &(rows, bytes)) in info.pieces.iter().enumerate() {
                    let cuts = match at {
                        Some(a) if rows > a => driver(f.format, &f.path)?
                            .cut_points(&f.path, i)?
                            .map(|pages| cuts_of(offset, rows, a, &pages)),
                        _ => None,
                    };
                    offset += rows;
                    let Some(cuts) = cuts.filter(|c| c.len() > 2) else { continue };
                    flush(&mut partitions, run_start..i);
                    run_start = i + 1;
                    for w in cuts.windows(2) {
                        let n = w[1] - w[0];
                        let b = (bytes as u128 * n as u128 / rows as u128) as u64;
                        partitions.push(make(Slice::RowGroupRows { row_group: i, rows: w[0]..w[1] }, n, b));
                    }
                }
                flush(&mut partitions, run_start..info.pieces.len());
            }
            FileFormat::Hdf5 => {
                let (rows, bytes) = info.pieces.first().copied().unwrap_or((0, 0));
                offset += rows;
                for r in split_rows(rows, target) {
                    let n = r.end - r.start;
                    let b = if rows == 0 { 0 } else { (bytes as u128 * n as u128 / rows as u128) as u64 };
                    partitions.push(make(Slice::Rows(r), n, b));
                }
            }
        }
    }
    for (i, p) in partitions.iter_mut().enumerate() {
        p.id = i;
    }
    Ok(partitions)
}

/// Row boundaries `0, .., rows` of a piece of `rows` rows that starts at row `offset` of the
/// dataset: where the dataset's row count crosses a multiple of `at`, moved to the nearest
/// of `pages` (page first rows; empty: anywhere) when one is within `at / 4` rows, without
/// duplicates.
pub(crate) fn cuts_of(offset: u64, rows: u64, at: u64, pages: &[u64]) -> Vec<u64> {
    let mut out = vec![0];
    let mut k = offset / at + 1;
    while k * at < offset + rows {
        let want = k * at - offset;
        let got = if pages.is_empty() {
            want
        } else {
            let i = pages.partition_point(|&p| p < want);
            let after = pages.get(i).copied().unwrap_or(rows);
            let before = if i > 0 { pages[i - 1] } else { 0 };
            let near = if want - before <= after - want { before } else { after };
            // Pages far coarser than the cut (one page per row group): cut inside a page,
            // which the ranks on both sides then decode.
            if near.abs_diff(want) <= at / 4 {
                near
            } else {
                want
            }
        };
        if got > *out.last().expect("0") && got < rows {
            out.push(got);
        }
        k += 1;
    }
    out.push(rows);
    out
}

/// Groups consecutive pieces (row groups, record batches) into ranges of about `target`
/// rows: a piece joins the current range when that brings it closer to `target` than
/// closing it would. Every piece belongs to exactly one range; empty input, no range.
pub(crate) fn group_pieces(rows: &[u64], target: u64) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut cur) = (0usize, 0u64);
    for (i, &r) in rows.iter().enumerate() {
        let joins = i == start || cur + r <= target || (cur + r - target) < target.saturating_sub(cur);
        if !joins {
            out.push(start..i);
            start = i;
            cur = 0;
        }
        cur += r;
    }
    if start < rows.len() {
        out.push(start..rows.len());
    }
    out
}

/// `ceil(rows / target)` ranges of equal size (within one row) covering `0..rows`.
pub(crate) fn split_rows(rows: u64, target: u64) -> Vec<std::ops::Range<u64>> {
    if rows == 0 {
        return Vec::new();
    }
    let k = rows.div_ceil(target.max(1));
    (0..k).map(|i| (i * rows / k)..((i + 1) * rows / k)).collect()
}

/// `true` for names that are not data: `_SUCCESS`, `_temporary`, `.crc` files, dot files.
pub(crate) fn is_hidden(name: &str) -> bool {
    name.starts_with('_') || name.starts_with('.')
}

/// `year=2024` -> `("year", "2024")`, with `%XX` escapes decoded as Spark writes them.
pub(crate) fn parse_hive(component: &str) -> Option<(String, String)> {
    let (k, v) = component.split_once('=')?;
    if k.is_empty() {
        return None;
    }
    Some((percent_decode(k), percent_decode(v)))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() {
            let hex = |c: u8| (c as char).to_digit(16).expect("hex digit") as u8;
            out.push(hex(b[i + 1]) * 16 + hex(b[i + 2]));
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value Spark and Hive write for a null partition key.
pub(crate) const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

fn find_files(input: &Input) -> Result<Vec<Found>> {
    let path = input.path();
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            does_not_exist(path)
        } else {
            Error::input(path, None, format!("cannot open: {e}; check the path (inputs are read by every rank)"))
        }
    })?;
    if !meta.is_dir() {
        let (format, datasets) = match input {
            Input::Parquet(_) => (FileFormat::Parquet, Vec::new()),
            Input::Ipc(_) => (FileFormat::Ipc, Vec::new()),
            Input::Hdf5 { datasets, .. } => (FileFormat::Hdf5, datasets.clone()),
        };
        return Ok(vec![Found { path: path.to_path_buf(), format, hive: Vec::new(), datasets }]);
    }
    let mut rel = Vec::new();
    walk(path, Path::new(""), &mut rel)?;
    rel.sort();
    if rel.is_empty() {
        return Err(Error::input(
            path,
            None,
            "no data files in this directory (names starting with _ or . are skipped)",
        ));
    }
    Ok(rel
        .into_iter()
        .map(|r| {
            let hive = r
                .parent()
                .map(|d| d.components().filter_map(|c| parse_hive(&c.as_os_str().to_string_lossy())).collect())
                .unwrap_or_default();
            let full = path.join(&r);
            // A directory is a Parquet dataset; files named like another format keep it.
            let format = format_of(&full).unwrap_or(FileFormat::Parquet);
            Found { path: full, format, hive, datasets: Vec::new() }
        })
        .collect())
}

/// Every data file under `root/rel`, as paths relative to `root`.
fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = root.join(rel);
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let name = entry.file_name();
        if is_hidden(&name.to_string_lossy()) {
            continue;
        }
        let child = rel.join(&name);
        // Follows symlinks, as a reader of the dataset would.
        let meta = std::fs::metadata(root.join(&child)).map_err(|e| Error::io(root.join(&child), e))?;
        if meta.is_dir() {
            walk(root, &child, out)?;
        } else {
            out.push(child);
        }
    }
    Ok(())
}

/// Checks that every file has the columns of the first (the selected ones when a
/// projection is given) with the same types, and that all files have the same Hive keys;
/// returns the schema of the batches.
fn check_schemas(files: &[Found], infos: &[FileInfo], columns: Option<&[String]>) -> Result<SchemaRef> {
    let (first, first_info) = (&files[0], &infos[0]);
    let hive_keys: Vec<&str> = first.hive.iter().map(|(k, _)| k.as_str()).collect();
    let names: Vec<String> = match columns {
        Some(c) => c.to_vec(),
        None => first_info
            .schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .chain(hive_keys.iter().map(|k| k.to_string()))
            .collect(),
    };
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(Error::InvalidArgument(format!("column {n:?} is selected twice")));
        }
    }
    // Fields of the first file, nullable where any file is nullable.
    let mut fields: Vec<Option<Field>> = Vec::with_capacity(names.len());
    for n in &names {
        if hive_keys.contains(&n.as_str()) {
            if first_info.schema.field_with_name(n).is_ok() {
                return Err(Error::input(
                    &first.path,
                    None,
                    format!("column {n:?} is both a column of the file and a key=value directory above it; rename one"),
                ));
            }
            fields.push(None);
            continue;
        }
        match first_info.schema.field_with_name(n) {
            Ok(f) => fields.push(Some(f.clone())),
            Err(_) => return Err(missing_column(&first.path, n, &first_info.schema, &hive_keys)),
        }
    }
    for (f, info) in files.iter().zip(infos).skip(1) {
        let keys: Vec<&str> = f.hive.iter().map(|(k, _)| k.as_str()).collect();
        if keys != hive_keys {
            let field = keys
                .iter()
                .find(|k| !hive_keys.contains(k))
                .or_else(|| hive_keys.iter().find(|k| !keys.contains(k)))
                .map_or_else(|| keys.join("/"), |k| k.to_string());
            return Err(Error::SchemaMismatch {
                first: first.path.clone(),
                second: f.path.clone(),
                field,
                detail: format!(
                    "the key=value directories differ ([{}] against [{}]); every file of a Hive-style \
                     dataset must sit under the same keys in the same order",
                    hive_keys.join(", "),
                    keys.join(", ")
                ),
            });
        }
        let mismatch = |field: &str, detail: String| Error::SchemaMismatch {
            first: first.path.clone(),
            second: f.path.clone(),
            field: field.to_string(),
            detail,
        };
        for slot in fields.iter_mut().flatten() {
            match info.schema.field_with_name(slot.name()) {
                Err(_) => return Err(mismatch(slot.name(), "the column is missing in the second file".into())),
                Ok(g) if g.data_type() != slot.data_type() => {
                    return Err(mismatch(
                        slot.name(),
                        format!("{} in the first file, {} in the second", slot.data_type(), g.data_type()),
                    ))
                }
                Ok(g) => {
                    if g.is_nullable() && !slot.is_nullable() {
                        *slot = slot.clone().with_nullable(true);
                    }
                }
            }
        }
        if columns.is_none() {
            if let Some(extra) =
                info.schema.fields().iter().find(|g| first_info.schema.field_with_name(g.name()).is_err())
            {
                return Err(mismatch(
                    extra.name(),
                    format!("the column ({}) is in the second file but not in the first", extra.data_type()),
                ));
            }
        }
    }
    let fields: Vec<Field> =
        names.iter().zip(fields).map(|(n, f)| f.unwrap_or_else(|| Field::new(n, DataType::Utf8, true))).collect();
    Ok(Arc::new(Schema::new(fields)))
}

fn missing_column(path: &Path, name: &str, schema: &Schema, hive: &[&str]) -> Error {
    let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).chain(hive.iter().copied()).collect();
    Error::input(path, None, format!("no column {name:?}; the columns are: {}", have.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(id: usize, rows: u64) -> Partition {
        Partition {
            id,
            file: PathBuf::from(format!("f{id}.parquet")),
            format: FileFormat::Parquet,
            slice: Slice::RowGroups(0..1),
            rows,
            bytes: rows * 8,
            hive: vec![("year".into(), "2024".into())],
            datasets: vec![],
        }
    }

    fn plan(rows: &[u64]) -> PartitionPlan {
        PartitionPlan {
            partitions: rows.iter().enumerate().map(|(i, &r)| part(i, r)).collect(),
            schema: Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, true)])),
        }
    }

    #[test]
    fn input_formats_come_from_extensions() {
        assert_eq!(Input::parse("a/b.parquet").unwrap(), Input::Parquet("a/b.parquet".into()));
        assert_eq!(Input::parse("b.PQ").unwrap(), Input::Parquet("b.PQ".into()));
        assert_eq!(Input::parse("b.feather").unwrap(), Input::Ipc("b.feather".into()));
        assert_eq!(Input::parse("b.arrow").unwrap(), Input::Ipc("b.arrow".into()));
        assert_eq!(Input::parse("b.h5").unwrap(), Input::Hdf5 { path: "b.h5".into(), datasets: vec![] });
        assert_eq!(
            Input::parse("d/b.hdf5:/x, y,").unwrap(),
            Input::Hdf5 { path: "d/b.hdf5".into(), datasets: vec!["x".into(), "y".into()] }
        );
        let dir = std::env::temp_dir();
        assert_eq!(Input::parse(dir.to_str().unwrap()).unwrap(), Input::Parquet(dir.clone()));
        let e = Input::parse("nope.csv").unwrap_err().to_string();
        assert!(e.contains("nope.csv") && e.contains("does not exist"), "{e}");
        let csv = dir.join(format!("gang-plan-input-{}.csv", std::process::id()));
        std::fs::write(&csv, b"a,b\n").unwrap();
        let e = Input::parse(csv.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("unknown input format") && e.contains(".parquet"), "{e}");
        std::fs::remove_file(&csv).unwrap();
        let e = Input::parse("/nonexistent").unwrap_err().to_string();
        assert!(e.contains("/nonexistent") && e.contains("does not exist"), "{e}");
        assert!(Input::parse("  ").is_err());
    }

    #[test]
    fn pieces_group_to_about_the_target() {
        assert_eq!(group_pieces(&[], 10), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(group_pieces(&[5, 5, 5, 5], 10), vec![0..2, 2..4]);
        assert_eq!(group_pieces(&[5, 5, 5], 10), vec![0..2, 2..3]);
        // A piece larger than the target is a partition of its own.
        assert_eq!(group_pieces(&[25, 3, 30], 10), vec![0..1, 1..2, 2..3]);
        // 6 + 6 = 12 is closer to 10 than 6 is.
        assert_eq!(group_pieces(&[6, 6, 6, 6], 10), vec![0..2, 2..4]);
        // 8 + 8 = 16 is farther from 10 than 8.
        assert_eq!(group_pieces(&[8, 8, 8], 10), vec![0..1, 1..2, 2..3]);
        // Empty row groups ride along.
        assert_eq!(group_pieces(&[0, 10, 0, 0, 10], 10), vec![0..4, 4..5]);
        // Target 1: one piece each.
        assert_eq!(group_pieces(&[1, 1, 1], 1), vec![0..1, 1..2, 2..3]);
        // Every piece exactly once, in order.
        let rows: Vec<u64> = (0..100).map(|i| (i * 37 % 11) as u64).collect();
        let g = group_pieces(&rows, 17);
        assert_eq!(g.first().unwrap().start, 0);
        assert_eq!(g.last().unwrap().end, 100);
        assert!(g.windows(2).all(|w| w[0].end == w[1].start && w[0].start < w[0].end));
    }

    #[test]
    fn cuts_fall_on_multiples_of_the_dataset_rows_snapped_to_pages() {
        assert_eq!(cuts_of(0, 100, 25, &[]), vec![0, 25, 50, 75, 100]);
        // A piece starting at dataset row 110: the multiples of 50 at 150 and 200.
        assert_eq!(cuts_of(110, 100, 50, &[]), vec![0, 40, 90, 100]);
        // Snapped to the nearest page within at / 4 rows; farther pages are ignored.
        let pages = [0, 24, 49, 80];
        // (96 is 4 rows from the end of the piece, which is a page boundary too.)
        assert_eq!(cuts_of(0, 100, 48, &pages), vec![0, 49, 100]);
        assert_eq!(cuts_of(0, 100, 25, &pages), vec![0, 24, 49, 80, 100]);
        assert_eq!(cuts_of(0, 100, 20, &pages), vec![0, 24, 40, 60, 80, 100]);
        // No cut at the ends, no duplicates.
        assert_eq!(cuts_of(0, 100, 100, &[]), vec![0, 100]);
        assert_eq!(cuts_of(0, 10, 3, &[0, 5]), vec![0, 3, 6, 9, 10]);
    }

    #[test]
    fn rows_split_evenly() {
        assert!(split_rows(0, 10).is_empty());
        assert_eq!(split_rows(10, 10), vec![0..10]);
        assert_eq!(split_rows(11, 10), vec![0..5, 5..11]);
        assert_eq!(split_rows(30, 10), vec![0..10, 10..20, 20..30]);
        assert_eq!(split_rows(3, 1), vec![0..1, 1..2, 2..3]);
        let s = split_rows(1_000_003, 65536);
        assert_eq!(s.len(), 16);
        assert!(s.iter().all(|r| r.end - r.start <= 65536));
        assert_eq!(s.last().unwrap().end, 1_000_003);
    }

    #[test]
    fn assignment_is_balanced_and_deterministic() {
        let p = plan(&[100, 100, 100, 100]);
        assert_eq!(p.assign(2), vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(p.assign(1), vec![vec![0, 1, 2, 3]]);
        // More ranks than partitions: the extra ranks get nothing.
        assert_eq!(p.assign(6), vec![vec![0], vec![1], vec![2], vec![3], vec![], vec![]]);
        // Longest first: 90 alone, then 50 + 40.
        let p = plan(&[50, 90, 40]);
        assert_eq!(p.assign(2), vec![vec![1], vec![0, 2]]);
        // Every partition exactly once; loads within the largest partition of each other.
        let rows: Vec<u64> = (0..97).map(|i| 1000 + (i * 7919 % 1000) as u64).collect();
        let p = plan(&rows);
        for world in 1..9 {
            let a = p.assign(world);
            assert_eq!(a, p.assign(world), "deterministic");
            let mut all: Vec<usize> = a.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..97).collect::<Vec<_>>());
            assert!(a.iter().all(|ids| ids.windows(2).all(|w| w[0] < w[1])));
            let loads: Vec<u64> = a.iter().map(|ids| ids.iter().map(|&i| rows[i]).sum()).collect();
            let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
            assert!(hi - lo <= 2000, "world {world}: {loads:?}");
            let mine: Vec<usize> = p.for_rank(world - 1, world).iter().map(|p| p.id).collect();
            assert_eq!(mine, a[world - 1]);
        }
    }

    #[test]
    fn hive_components_parse() {
        assert_eq!(parse_hive("year=2024"), Some(("year".into(), "2024".into())));
        assert_eq!(parse_hive("city=New%20York"), Some(("city".into(), "New York".into())));
        assert_eq!(parse_hive("k=a=b"), Some(("k".into(), "a=b".into())));
        assert_eq!(parse_hive("k="), Some(("k".into(), "".into())));
        assert_eq!(parse_hive("bad%zz=1%"), Some(("bad%zz".into(), "1%".into())));
        assert_eq!(parse_hive("=x"), None);
        assert_eq!(parse_hive("plain"), None);
    }

    #[test]
    fn skip_rules() {
        for n in ["_SUCCESS", "_temporary", "_committed_123", ".part-0.parquet.crc", ".DS_Store"] {
            assert!(is_hidden(n), "{n}");
        }
        for n in ["part-0.parquet", "year=2024", "x_SUCCESS"] {
            assert!(!is_hidden(n), "{n}");
        }
    }

    #[test]
    fn directories_are_walked_in_order_with_hive_keys() {
        let root = std::env::temp_dir().join(format!("gang-plan-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for f in [
            "year=2024/month=2/b.parquet",
            "year=2024/month=10/a.parquet",
            "year=2023/month=1/z.parquet",
            "year=2023/month=1/.z.parquet.crc",
            "year=2023/_temporary/0/x.parquet",
            ".hidden/x.parquet",
            "_SUCCESS",
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        }
        let found = find_files(&Input::Parquet(root.clone())).unwrap();
        let rel: Vec<String> =
            found.iter().map(|f| f.path.strip_prefix(&root).unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            rel,
            vec!["year=2023/month=1/z.parquet", "year=2024/month=10/a.parquet", "year=2024/month=2/b.parquet"]
        );
        assert_eq!(found[1].hive, vec![("year".into(), "2024".into()), ("month".into(), "10".into())]);
        std::fs::remove_dir_all(&root).unwrap();
        let e = find_files(&Input::Parquet(root.clone())).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn plans_round_trip_through_bytes() {
        let mut p = plan(&[3, 4]);
        p.partitions[1].slice = Slice::Rows(7..11);
        p.partitions[1].format = FileFormat::Hdf5;
        p.partitions[1].datasets = vec!["a".into()];
        let b = p.to_bytes().unwrap();
        assert_eq!(PartitionPlan::from_bytes(&b).unwrap(), p);
        assert!(PartitionPlan::from_bytes(&b[..5]).is_err());
        assert!(PartitionPlan::from_bytes(&b[..b.len() - 3]).is_err());
        assert!(PartitionPlan::from_bytes(b"garbage").is_err());
    }
}
