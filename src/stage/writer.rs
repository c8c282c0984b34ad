//! Writers of output partitions: Parquet, Arrow IPC and HDF5 behind one [`BatchSink`].
//!
//! Every sink checksums (CRC-32) and counts the bytes of its file while writing them when it
//! writes through a Rust `Write` (Parquet, IPC), or by reading the file back once when a C
//! library writes it (HDF5). [`BatchSink::complete`] hands back the written file with its
//! write-back started, [`BatchSink::finish`] fsyncs it too: the output committer renames
//! only durable files.

use crate::data::FileFormat;
use crate::digest::ChecksumWriter;
use crate::error::{Error, Result};
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use std::fmt;
use std::fs::File;
#[cfg(feature = "parquet")]
use std::io::Write;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Compression of Parquet output.
///
/// The default is Snappy, chosen by measurement (bench/RESULTS.md, issue 10): on 2,000,000
/// rows x 32 random float32 features, a 2-rank map stage wrote snappy in 0.88 s of stage
/// time, zstd level 1 in 1.16 s and level 3 in 1.29 s, and zstd's files were only 8%
/// smaller (237 MB against 257 MB; floats with random mantissas barely compress). Choose
/// `Zstd` when storage or network matter more than the write (repetitive or integer data
/// shrinks far more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ParquetCompression {
    /// Zstandard at this level (1..=22); `parquet:zstd` is level 3.
    Zstd(i32),
    /// Snappy.
    #[default]
    Snappy,
    /// No compression.
    None,
}

/// The format of a stage's output files.
///
/// Parsed from the strings of the command line: `parquet` (snappy), `parquet:zstd` (level 3),
/// `parquet:zstd:LEVEL`, `parquet:snappy`, `parquet:none`, `ipc`, `ipc:zstd`, `hdf5`.
///
/// ```
/// use gang::stage::{OutputFormat, ParquetCompression};
///
/// let f: OutputFormat = "parquet:snappy".parse().unwrap();
/// assert_eq!(f, OutputFormat::Parquet { compression: ParquetCompression::Snappy });
/// assert_eq!(f.extension(), "parquet");
/// assert_eq!(f.to_string().parse::<OutputFormat>().unwrap(), f);
/// assert!("csv".parse::<OutputFormat>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutputFormat {
    /// Apache Parquet.
    Parquet {
        /// Column chunk compression.
        compression: ParquetCompression,
    },
    /// Arrow IPC file format.
    Ipc {
        /// Zstandard-compress record batch buffers (IPC metadata v5).
        zstd: bool,
    },
    /// HDF5: one 1-D dataset per numeric column.
    Hdf5,
}

impl Default for OutputFormat {
    /// Parquet (snappy), or Arrow IPC in a build without the `parquet` feature.
    fn default() -> Self {
        if cfg!(feature = "parquet") {
            OutputFormat::Parquet { compression: ParquetCompression::default() }
        } else {
            OutputFormat::Ipc { zstd: false }
        }
    }
}

impl OutputFormat {
    /// File name extension of the output files, without the dot.
    pub fn extension(&self) -> &'static str {
        match self {
            OutputFormat::Parquet { .. } => "parquet",
            OutputFormat::Ipc { .. } => "arrow",
            OutputFormat::Hdf5 => "h5",
        }
    }

    /// The file format, as the readers know it.
    pub fn file_format(&self) -> FileFormat {
        match self {
            OutputFormat::Parquet { .. } => FileFormat::Parquet,
            OutputFormat::Ipc { .. } => FileFormat::Ipc,
            OutputFormat::Hdf5 => FileFormat::Hdf5,
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputFormat::Parquet { compression: ParquetCompression::Zstd(l) } => write!(f, "parquet:zstd:{l}"),
            OutputFormat::Parquet { compression: ParquetCompression::Snappy } => f.write_str("parquet:snappy"),
            OutputFormat::Parquet { compression: ParquetCompression::None } => f.write_str("parquet:none"),
            OutputFormat::Ipc { zstd: true } => f.write_str("ipc:zstd"),
            OutputFormat::Ipc { zstd: false } => f.write_str("ipc"),
            OutputFormat::Hdf5 => f.write_str("hdf5"),
        }
    }
}

impl FromStr for OutputFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<OutputFormat> {
        let lower = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split(':').collect();
        let zstd_level = |l: &str| -> Result<i32> {
            match l.parse::<i32>() {
                Ok(v) if (1..=22).contains(&v) => Ok(v),
                _ => Err(Error::InvalidArgument(format!("output format {s:?}: the zstd level must be 1..=22"))),
            }
        };
        let parquet = |compression| OutputFormat::Parquet { compression };
        Ok(match parts.as_slice() {
            ["parquet"] => parquet(ParquetCompression::default()),
            ["parquet", "zstd"] => parquet(ParquetCompression::Zstd(3)),
            ["parquet", "zstd", l] => parquet(ParquetCompression::Zstd(zstd_level(l)?)),
            ["parquet", "snappy"] => parquet(ParquetCompression::Snappy),
            ["parquet", "none" | "uncompressed"] => parquet(ParquetCompression::None),
            ["ipc" | "arrow"] => OutputFormat::Ipc { zstd: false },
            ["ipc" | "arrow", "zstd"] => OutputFormat::Ipc { zstd: true },
            ["hdf5" | "h5"] => OutputFormat::Hdf5,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown output format {s:?}: use parquet, parquet:zstd[:LEVEL], parquet:snappy, \
                     parquet:none, ipc, ipc:zstd or hdf5"
                )))
            }
        })
    }
}

/// Size and CR-32 of a finished output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDigest {
    /// Length of the file in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE, as `crc32fast` and zlib compute it) of the whole file.
    pub crc32: u32,
}

impl FileDigest {
    /// Reads `path` once and computes its digest.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read.
    pub fn of_file(path: &Path) -> Result<FileDigest> {
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        Ok(FileDigest { bytes, crc32: hasher.finalize() })
    }
}

/// A complete output file whose bytes may not be on the disk yet: the footer is written and
/// the kernel was asked to write it back (`sync_file_range`), but nothing has
/// waited for it. [`WrittenFile::sync`] makes it durable; the output committer does that on a
/// background thread while the rank encodes its next partition.
#[derive(Debug)]
pub struct WrittenFile {
    file: File,
    path: PathBuf,
    digest: FileDigest,
}

impl WrittenFile {
    fn new(file: File, path: &Path, bytes: u64, crc32: u32) -> WrittenFile {
        crate::sys::start_writeback(&file, 0, bytes);
        WrittenFile { file, path: path.to_path_buf(), digest: FileDigest { bytes, crc32 } }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size and checksum of what was written.
    pub fn digest(&self) -> FileDigest {
        self.digest
    }

    /// Waits until the file's data and metadata are on the disk (fsync).
    ///
    /// # Errors
    /// [`Error::Io`] naming the file if the disk did not take it.
    pub fn sync(self) -> Result<FileDigest> {
        sync(&self.file, &self.path)?;
        Ok(self.digest)
    }
}

/// A writer of one output file: batches in, a durable file out.
pub trait BatchSink: Send {
    /// Appends a batch; its schema must be the sink's.
    ///
    /// # Errors
    /// Writer and I/O errors, naming the file.
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;

    /// Completes the file (footer) and starts its write-back without waiting for it.
    ///
    /// # Errors
    /// Writer and I/O errors, naming the file.
    fn complete(self: Box<Self>) -> Result<WrittenFile>;

    /// Completes the file, fsyncs it and returns its size and checksum.
    ///
    /// # Errors
    /// Writer and I/O errors, naming the file.
    fn finish(self: Box<Self>) -> Result<FileDigest> {
        self.complete()?.sync()
    }
}

/// Opens a sink that writes `schema`'d batches to a new file at `path` (replacing any file
/// there).
///
/// # Errors
/// [`Error::Io`] if the file cannot be created; [`Error::Output`] if the format cannot
/// hold the schema.
pub fn open_sink(format: OutputFormat, path: &Path, schema: &SchemaRef) -> Result<Box<dyn BatchSink>> {
    let inner: Box<dyn BatchSink> = match format {
        #[cfg(feature = "parquet")]
        OutputFormat::Parquet { compression } => Box::new(ParquetSink::create(path, schema, compression)?),
        OutputFormat::Ipc { zstd } => Box::new(IpcSink::create(path, schema, zstd)?),
        #[cfg(feature = "hdf5")]
        OutputFormat::Hdf5 => hdf5_sink(path, schema)?,
        #[allow(unreachable_patterns)]
        other => {
            return Err(Error::Output {
                path: path.to_path_buf(),
                detail: format!(
                    "this build of gang cannot write {other}: rebuild it with the cargo feature \"{}\", \
                     or write Arrow IPC",
                    if matches!(other, OutputFormat::Hdf5) { "hdf5" } else { "parquet" }
                ),
            })
        }
    };
    Ok(Box::new(SchemaChecked { path: path.to_path_buf(), schema: schema.clone(), inner }))
}

/// Same field names, types and nullability (metadata may differ).
pub(crate) fn same_fields(a: &SchemaRef, b: &SchemaRef) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type() && x.is_nullable() == y.is_nullable())
}

/// Refuses batches of another schema: the Parquet writer does not check (arrow-rs 60 writes
/// a batch with fewer columns into a file whose footer then disagrees with its data).
struct SchemaChecked {
    path: PathBuf,
    schema: SchemaRef,
    inner: Box<dyn BatchSink>,
}

impl BatchSink for SchemaChecked {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if !same_fields(batch.schema_ref(), &self.schema) {
            return Err(Error::Output {
                path: self.path.clone(),
                detail: format!(
                    "a batch with schema {} does not match the file's schema {}",
                    super::manifest::schema_json(batch.schema_ref()),
                    super::manifest::schema_json(&self.schema)
                ),
            });
        }
        self.inner.write(batch)
    }

    fn complete(self: Box<Self>) -> Result<WrittenFile> {
        self.inner.complete()
    }
}

#[cfg(feature = "hdf5")]
fn hdf5_sink(path: &Path, schema: &SchemaRef) -> Result<Box<dyn BatchSink>> {
    let writer = super::Hdf5Writer::create(path, schema)?;
    Ok(Box::new(Hdf5Sink { path: path.to_path_buf(), writer }))
}

/// HDF5 through the data plane's writer (the HDF5 C library writes the file itself, so the
/// file is checksummed by reading it back once).
#[cfg(feature = "hdf5")]
struct Hdf5Sink {
    path: PathBuf,
    writer: super::Hdf5Writer,
}

#[cfg(feature = "hdf5")]
impl BatchSink for Hdf5Sink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch)
    }

    fn complete(self: Box<Self>) -> Result<WrittenFile> {
        let Hdf5Sink { path, writer } = *self;
        writer.finish()?;
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let FileDigest { bytes, crc32 } = FileDigest::of_file(&path)?;
        Ok(WrittenFile::new(file, &path, bytes, crc32))
    }
}

fn create_file(path: &Path) -> Result<File> {
    File::create(path).map_err(|e| Error::io(path, e))
}

/// Flushed data and metadata on disk.
fn sync(file: &File, path: &Path) -> Result<()> {
    file.sync_all().map_err(|e| Error::io(path, e))
}

/// The Parquet writer properties gang writes with, per column type:
///
/// - floating-point columns: no dictionary, `PLAIN` pages. Measured floats rarely repeat, so
///   arrow-rs's default (dictionary first, falling back once the dictionary page is full)
///   spends time building a dictionary it throws away, and its fallback wrote files 1.4x
///   the size of pyarrow's `use_dictionary=False` (bench/RESULTS.md);
/// - every other column: arrow-rs's defaults (dictionary, falling back to `PLAIN`): labels,
///   ids and strings with few distinct values shrink to a dictionary and run lengths;
/// - statistics per page (min, max, null count in the column chunk and in the page index):
///   readers prune with them, and the offset index lets a reader of a row range inside a row
///   group decode only its pages ([`crate::data::plan`] splits row groups that way);
/// - data pages of at most 1 MiB or [`PARQUET_PAGE_ROWS`] rows, row groups of at most 1 Mi
///   rows (arrow-rs's and pyarrow's sizes; measured no faster either way on the benchmark's
///   data); the column writers take [`PARQUET_PAGE_ROWS`] rows between two checks of a page's
///   size;
/// - the codec of `compression`.
///
/// # Errors
/// [`Error::Output`] naming `path` for a zstd level out of range or a schema Parquet cannot
/// hold.
#[cfg(feature = "parquet")]
pub fn parquet_properties(
    path: &Path,
    schema: &SchemaRef,
    compression: ParquetCompression,
) -> Result<parquet::file::properties::WriterProperties> {
    use parquet::arrow::ArrowSchemaConverter;
    use parquet::basic::{Compression, Encoding, Type, ZstdLevel};
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    let codec = match compression {
        ParquetCompression::Zstd(level) => {
            Compression::ZSTD(ZstdLevel::try_new(level).map_err(|e| parquet_err(path, e))?)
        }
        ParquetCompression::Snappy => Compression::SNAPPY,
        ParquetCompression::None => Compression::UNCOMPRESSED,
    };
    let mut b = WriterProperties::builder()
        .set_compression(codec)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(PARQUET_ROW_GROUP_ROWS))
        .set_data_page_row_count_limit(PARQUET_PAGE_ROWS)
        .set_write_batch_size(PARQUET_PAGE_ROWS);
    let descr = ArrowSchemaConverter::new().convert(schema).map_err(|e| parquet_err(path, e))?;
    for c in descr.columns() {
        let float = matches!(c.physical_type(), Type::FLOAT | Type::DOUBLE)
            || matches!(c.logical_type_ref(), Some(parquet::basic::LogicalType::Float16));
        if float {
            b = b
                .set_column_dictionary_enabled(c.path().clone(), false)
                .set_column_encoding(c.path().clone(), Encoding::PLAIN);
        }
    }
    Ok(b.build())
}

/// Rows per Parquet row group that gang writes (pyarrow's and arrow-rs's default).
#[cfg(feature = "parquet")]
pub const PARQUET_ROW_GROUP_ROWS: usize = 1 << 20;

/// Rows per data page at most (arrow-rs's default), and the rows the column writers take at
/// a time between two checks of the page's size. arrow-rs takes this many for a column
/// whose definition levels are all alike (no nulls, or only nulls) and its write batch size
/// (1,024 by default) otherwise; with the two equal, the float columns gang writes from their
/// values cut their pages where arrow-rs's Arrow writer does.
#[cfg(feature = "parquet")]
pub const PARQUET_PAGE_ROWS: usize = 20_000;

/// Bytes a Parquet file's writes are gathered into before they reach the file.
#[cfg(feature = "parquet")]
const OUTPUT_BUFFER: usize = 1 << 20;

/// Parquet with one column writer per column, fed in parallel.
///
/// A batch is cut into its leaf columns; each column writer encodes and compresses its
/// pages on its own, so the columns of a batch are spread over the threads the rank may use
/// (its CPU affinity: one rank per node uses the node; ranks bound to one core each encode
/// in line, with no thread started). When a row group is full its column chunks are closed
/// (in parallel too) and appended to the file in column order, so the file is the same
/// whatever the number of threads.
///
/// Floating-point columns of a flat schema (the features of every map and training set)
/// skip arrow-rs's Arrow writer: it gathers every value through a list of indices of the
/// non-null values, eight bytes per value, even for a column without nulls. Their arrays
/// are kept until the row group closes and then written from their contiguous values by a
/// Parquet column writer ([`encode_floats`]): the same pages, statistics and page index.
#[cfg(feature = "parquet")]
struct ParquetSink {
    path: PathBuf,
    file: parquet::file::writer::SerializedFileWriter<ChecksumWriter<BufWriter<File>>>,
    factory: parquet::arrow::arrow_writer::ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// Which leaf columns take the contiguous float path (only in a flat schema, where leaf
    /// `i` is field `i`).
    floats: Vec<bool>,
    /// The columns of the row group being written, with its rows so far.
    group: Option<(Vec<GroupColumn>, usize)>,
    groups_written: usize,
    /// Rows per row group ([`PARQUET_ROW_GROUP_ROWS`]; smaller in tests).
    group_rows: usize,
    threads: usize,
}

/// One column of the row group being written.
#[cfg(feature = "parquet")]
enum GroupColumn {
    /// Encoded batch by batch by arrow-rs.
    Arrow(Box<parquet::arrow::arrow_writer::ArrowColumnWriter>),
    /// A float column's arrays, encoded when the row group closes.
    Floats(Vec<arrow_array::ArrayRef>),
}

/// A closed column chunk, ready to be appended to its row group.
#[cfg(feature = "parquet")]
enum ClosedColumn {
    Arrow(parquet::arrow::arrow_writer::ArrowColumnChunk),
    Encoded(bytes::Bytes, parquet::column::writer::ColumnCloseResult),
}

#[cfg(feature = "parquet")]
impl ParquetSink {
    fn create(path: &Path, schema: &SchemaRef, compression: ParquetCompression) -> Result<Self> {
        let props = parquet_properties(path, schema, compression)?;
        // parquet's own 8 KiB buffer hands the column chunks encoded in memory over in
        // 8 KiB pieces (`append_column` copies through it): 31,000 writes for 256 MB
        // without a buffer of ours.
        let file = ChecksumWriter::new(BufWriter::with_capacity(OUTPUT_BUFFER, create_file(path)?));
        // ArrowWriter adds the Arrow schema to the footer's metadata (types Parquet alone
        // cannot say, such as time zones); its lower-level parts then write the columns.
        let (file, factory) = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props))
            .and_then(|w| w.into_serialized_writer())
            .map_err(|e| parquet_err(path, e))?;
        let flat = file.schema_descr().num_columns() == schema.fields().len();
        let floats = schema
            .fields()
            .iter()
            .map(|f| flat && matches!(f.data_type(), arrow_schema::DataType::Float32 | arrow_schema::DataType::Float64))
            .collect();
        Ok(ParquetSink {
            path: path.to_path_buf(),
            file,
            factory,
            schema: schema.clone(),
            floats,
            group: None,
            groups_written: 0,
            group_rows: PARQUET_ROW_GROUP_ROWS,
            threads: encode_threads(),
        })
    }

    /// Encodes `batch` (which fits in the current row group) into the column writers.
    fn encode(&mut self, batch: &RecordBatch) -> Result<()> {
        use parquet::arrow::arrow_writer::compute_leaves;
        let path = &self.path;
        if self.group.is_none() {
            let writers = self.factory.create_column_writers(self.groups_written).map_err(|e| parquet_err(path, e))?;
            let columns = writers
                .into_iter()
                .enumerate()
                .map(|(i, w)| match self.floats.get(i) {
                    Some(true) => GroupColumn::Floats(Vec::new()),
                    _ => GroupColumn::Arrow(Box::new(w)),
                })
                .collect();
            self.group = Some((columns, 0));
        }
        let (columns, rows) = self.group.as_mut().expect("a row group");
        let mut leaves = Vec::with_capacity(columns.len());
        for (i, (field, column)) in self.schema.fields().iter().zip(batch.columns()).enumerate() {
            if self.floats.get(i) == Some(&true) {
                leaves.push(None);
            } else {
                leaves.extend(compute_leaves(field, column).map_err(|e| parquet_err(path, e))?.into_iter().map(Some));
            }
        }
        let mut jobs = Vec::with_capacity(columns.len());
        for (i, (c, leaf)) in columns.iter_mut().zip(leaves).enumerate() {
            match c {
                GroupColumn::Floats(arrays) => arrays.push(batch.column(i).clone()),
                GroupColumn::Arrow(w) => jobs.push((w, leaf.expect("a leaf of an Arrow-written column"))),
            }
        }
        in_parallel(&mut jobs, self.threads, |(w, leaf)| w.write(leaf)).map_err(|e| parquet_err(path, e))?;
        *rows += batch.num_rows();
        Ok(())
    }

    /// Closes the column chunks of the current row group and appends them to the file.
    fn flush_group(&mut self) -> Result<()> {
        let Some((columns, _)) = self.group.take() else { return Ok(()) };
        let path = &self.path;
        if self.threads == 1 {
            // In line, float columns are encoded straight into the file, with no copy
            // through memory.
            let mut rg = self.file.next_row_group().map_err(|e| parquet_err(path, e))?;
            for c in columns {
                match c {
                    GroupColumn::Arrow(w) => w.close().and_then(|chunk| chunk.append_to_row_group(&mut rg)),
                    GroupColumn::Floats(arrays) => rg.next_column().and_then(|col| {
                        let mut col = col.ok_or_else(|| {
                            parquet::errors::ParquetError::General("more columns than the schema holds".into())
                        })?;
                        write_floats(col.untyped(), &arrays)?;
                        col.close()
                    }),
                }
                .map_err(|e| parquet_err(path, e))?;
            }
            rg.close().map_err(|e| parquet_err(path, e))?;
            self.groups_written += 1;
            return Ok(());
        }
        let descr = self.file.schema_descr().clone();
        let props = self.file.properties().clone();
        let mut slots: Vec<_> = columns.into_iter().enumerate().map(|(i, c)| (i, Some(c), None)).collect();
        in_parallel(&mut slots, self.threads, |(i, c, closed)| {
            *closed = Some(match c.take().expect("a column") {
                GroupColumn::Arrow(w) => ClosedColumn::Arrow(w.close()?),
                GroupColumn::Floats(arrays) => {
                    let (bytes, close) = encode_floats(descr.column(*i), &props, &arrays)?;
                    ClosedColumn::Encoded(bytes, close)
                }
            });
            Ok(())
        })
        .map_err(|e| parquet_err(path, e))?;
        let mut rg = self.file.next_row_group().map_err(|e| parquet_err(path, e))?;
        for (_, _, closed) in slots {
            match closed.expect("a closed column chunk") {
                ClosedColumn::Arrow(chunk) => chunk.append_to_row_group(&mut rg),
                ClosedColumn::Encoded(bytes, close) => rg.append_column(&bytes, close),
            }
            .map_err(|e| parquet_err(path, e))?;
        }
        rg.close().map_err(|e| parquet_err(path, e))?;
        self.groups_written += 1;
        Ok(())
    }
}

/// Encodes one float column chunk from its arrays into memory (on a thread of its own; see
/// [`write_floats`]).
#[cfg(feature = "parquet")]
fn encode_floats(
    descr: parquet::schema::types::ColumnDescPtr,
    props: &parquet::file::properties::WriterPropertiesPtr,
    arrays: &[arrow_array::ArrayRef],
) -> parquet::errors::Result<(bytes::Bytes, parquet::column::writer::ColumnCloseResult)> {
    use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
    // Room for the values and their page headers: the buffer never grows by copying. (The
    // arrays' own lengths: a slice's buffer may be far larger than the slice.)
    let values: usize = arrays.iter().map(|a| a.len() * a.data_type().primitive_width().unwrap_or(8)).sum();
    let mut sink = TrackedWrite::new(Vec::with_capacity(values + values / 16 + 4096));
    let close = {
        let pages = Box::new(SerializedPageWriter::new(&mut sink));
        let mut writer = parquet::column::writer::get_column_writer(descr, props.clone(), pages);
        write_floats(&mut writer, arrays)?;
        writer.close()?
    };
    Ok((bytes::Bytes::from(sink.into_inner()?), close))
}

/// Writes a float column's arrays (Float32 or Float64, as the column's physical type says)
/// to its column writer: every value straight from the array's contiguous buffer; for an
/// array with nulls, its valid values and definition levels.
#[cfg(feature = "parquet")]
fn write_floats(
    writer: &mut parquet::column::writer::ColumnWriter<'_>,
    arrays: &[arrow_array::ArrayRef],
) -> parquet::errors::Result<()> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Float64Type};
    use arrow_array::Array;
    use parquet::column::writer::{ColumnWriter, ColumnWriterImpl};
    use parquet::data_type::DataType as ParquetType;

    /// Writes `values` (with `nulls`) to `w`; `present` holds definition levels of 1.
    fn put<T: ParquetType>(
        w: &mut ColumnWriterImpl<'_, T>,
        values: &[T::T],
        nulls: Option<&arrow_buffer::NullBuffer>,
        present: &[i16],
    ) -> parquet::errors::Result<()>
    where
        T::T: Copy,
    {
        let optional = w.get_descriptor().max_def_level() > 0;
        match nulls.filter(|n| n.null_count() > 0) {
            None if optional => w.write_batch(values, Some(&present[..values.len()]), None).map(|_| ()),
            None => w.write_batch(values, None, None).map(|_| ()),
            Some(n) => {
                let levels: Vec<i16> = n.iter().map(i16::from).collect();
                let valid: Vec<T::T> = n.valid_indices().map(|i| values[i]).collect();
                w.write_batch(&valid, Some(&levels), None).map(|_| ())
            }
        }
    }

    let longest = arrays.iter().map(|a| a.len()).max().unwrap_or(0);
    let present = vec![1i16; longest];
    for a in arrays {
        match writer {
            ColumnWriter::FloatColumnWriter(w) => {
                let a = a.as_primitive_opt::<Float32Type>().ok_or_else(|| not_float(a))?;
                put(w, a.values(), a.nulls(), &present)?;
            }
            ColumnWriter::DoubleColumnWriter(w) => {
                let a = a.as_primitive_opt::<Float64Type>().ok_or_else(|| not_float(a))?;
                put(w, a.values(), a.nulls(), &present)?;
            }
            _ => return Err(not_float(a)),
        }
    }
    Ok(())
}

#[cfg(feature = "parquet")]
fn not_float(a: &arrow_array::ArrayRef) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::General(format!(
        "an array of type {} where the column's physical type is FLOAT or DOUBLE",
        a.data_type()
    ))
}

/// Threads a sink may encode with: the cores this process may run on.
#[cfg(feature = "parquet")]
fn encode_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `f` on every item, spread over at most `threads` scoped threads in contiguous runs
/// (in line when one suffices); the first error wins.
#[cfg(feature = "parquet")]
fn in_parallel<T: Send>(
    items: &mut [T],
    threads: usize,
    f: impl Fn(&mut T) -> parquet::errors::Result<()> + Sync,
) -> parquet::errors::Result<()> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter_mut().try_for_each(&f);
    }
    let per = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items.chunks_mut(per).map(|run| s.spawn(|| run.iter_mut().try_for_each(&f))).collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })
}

#[cfg(feature = "parquet")]
fn parquet_err(path: &Path, e: parquet::errors::ParquetError) -> Error {
    Error::Output { path: path.to_path_buf(), detail: format!("writing Parquet: {e}") }
}

fn arrow_err(path: &Path, what: &str, e: arrow_schema::ArrowError) -> Error {
    Error::Output { path: path.to_path_buf(), detail: format!("writing {what}: {e}") }
}

#[cfg(feature = "parquet")]
impl BatchSink for ParquetSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut rest = batch.clone();
        while rest.num_rows() > 0 {
            let have = self.group.as_ref().map_or(0, |g| g.1);
            let take = rest.num_rows().min(self.group_rows - have);
            self.encode(&rest.slice(0, take))?;
            rest = rest.slice(take, rest.num_rows() - take);
            if have + take == self.group_rows {
                self.flush_group()?;
            }
        }
        Ok(())
    }

    fn complete(mut self: Box<Self>) -> Result<WrittenFile> {
        self.flush_group()?;
        let ParquetSink { path, file, .. } = *self;
        let mut w = file.into_inner().map_err(|e| parquet_err(&path, e))?;
        w.flush().map_err(|e| Error::io(&path, e))?;
        let (buffered, bytes, crc32) = w.finish();
        let file = buffered.into_inner().map_err(|e| Error::io(&path, e.into_error()))?;
        Ok(WrittenFile::new(file, &path, bytes, crc32))
    }
}

/// Arrow IPC file format through `arrow_ipc::writer::FileWriter`.
struct IpcSink {
    path: PathBuf,
    writer: arrow_ipc::writer::FileWriter<BufWriter<ChecksumWriter<File>>>,
}

impl IpcSink {
    fn create(path: &Path, schema: &SchemaRef, zstd: bool) -> Result<Self> {
        let mut options = arrow_ipc::writer::IpcWriteOptions::default();
        if zstd {
            options = options
                .try_with_compression(Some(arrow_ipc::CompressionType::ZSTD))
                .map_err(|e| arrow_err(path, "Arrow IPC", e))?;
        }
        let file = BufWriter::with_capacity(1 << 20, ChecksumWriter::new(create_file(path)?));
        let writer = arrow_ipc::writer::FileWriter::try_new_with_options(file, schema, options)
            .map_err(|e| arrow_err(path, "Arrow IPC", e))?;
        Ok(IpcSink { path: path.to_path_buf(), writer })
    }
}

impl BatchSink for IpcSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch).map_err(|e| arrow_err(&self.path, "Arrow IPC", e))
    }

    fn complete(self: Box<Self>) -> Result<WrittenFile> {
        let IpcSink { path, writer } = *self;
        let buffered = writer.into_inner().map_err(|e| arrow_err(&path, "Arrow IPC", e))?;
        let w = buffered.into_inner().map_err(|e| Error::io(&path, e.into_error()))?;
        let (file, bytes, crc32) = w.finish();
        Ok(WrittenFile::new(file, &path, bytes, crc32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float64Array, Int64Array};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..n)),
                Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64 * 0.5))),
            ],
        )
        .unwrap()
    }

    /// Every row of a Parquet file, as one batch.
    #[cfg(feature = "parquet")]
    fn read_parquet(path: &Path, schema: &SchemaRef) -> RecordBatch {
        let read: Vec<RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
        arrow_select::concat::concat_batches(schema, &read).unwrap()
    }

    #[test]
    fn formats_parse_and_print_back() {
        for s in ["parquet:zstd:3", "parquet:zstd:9", "parquet:snappy", "parquet:none", "ipc", "ipc:zstd", "hdf5"] {
            let f: OutputFormat = s.parse().unwrap();
            assert_eq!(f.to_string(), s);
        }
        let parquet = OutputFormat::Parquet { compression: ParquetCompression::default() };
        assert_eq!("parquet".parse::<OutputFormat>().unwrap(), parquet);
        assert_eq!("PARQUET:SNAPPY".parse::<OutputFormat>().unwrap(), parquet);
        let zstd = OutputFormat::Parquet { compression: ParquetCompression::Zstd(3) };
        assert_eq!("parquet:zstd".parse::<OutputFormat>().unwrap(), zstd);
        let e = "parquet:zstd:99".parse::<OutputFormat>().unwrap_err().to_string();
        assert!(e.contains("1..=22"), "{e}");
        let e = "orc".parse::<OutputFormat>().unwrap_err().to_string();
        assert!(e.contains("unknown output format \"orc\""), "{e}");
        assert_eq!(OutputFormat::Ipc { zstd: true }.extension(), "arrow");
        assert_eq!(OutputFormat::Hdf5.file_format(), FileFormat::Hdf5);
    }

    #[test]
    #[cfg(feature = "parquet")]
    fn sinks_write_readable_files_with_a_digest_of_what_is_on_disk() {
        let dir = std::env::temp_dir().join(format!("gang-writer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let b = batch(1000);
        for fmt in ["parquet", "parquet:snappy", "parquet:none", "ipc", "ipc:zstd"] {
            let format: OutputFormat = fmt.parse().unwrap();
            let path = dir.join(format!("out-{}.{}", fmt.replace(':', "-"), format.extension()));
            let mut sink = open_sink(format, &path, &b.schema()).unwrap();
            sink.write(&b).unwrap();
            sink.write(&b.slice(0, 10)).unwrap();
            let digest = sink.finish().unwrap();
            assert_eq!(digest, FileDigest::of_file(&path).unwrap(), "{fmt}");
            let rows: usize = match format {
                OutputFormat::Parquet { .. } => {
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
                        .unwrap()
                        .build()
                        .unwrap()
                        .map(|b| b.unwrap().num_rows())
                        .sum()
                }
                _ => arrow_ipc::reader::FileReader::try_new(File::open(&path).unwrap(), None)
                    .unwrap()
                    .map(|b| b.unwrap().num_rows())
                    .sum(),
            };
            assert_eq!(rows, 1010, "{fmt}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[cfg(feature = "parquet")]
    fn parquet_columns_are_encoded_per_type_the_same_whatever_the_threads() {
        use parquet::basic::Encoding;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = std::env::temp_dir().join(format!("gang-writer-par-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let b = batch(25_000);
        let mut files = Vec::new();
        for threads in [1, 2, 5] {
            let path = dir.join(format!("t{threads}.parquet"));
            let mut sink = ParquetSink::create(&path, &b.schema(), ParquetCompression::Snappy).unwrap();
            (sink.group_rows, sink.threads) = (10_000, threads);
            let mut sink: Box<dyn BatchSink> = Box::new(sink);
            // Batches that straddle row groups.
            for (off, len) in [(0, 7_000), (7_000, 9_000), (16_000, 9_000)] {
                sink.write(&b.slice(off, len)).unwrap();
            }
            let digest = sink.finish().unwrap();
            assert_eq!(digest, FileDigest::of_file(&path).unwrap());
            files.push(std::fs::read(&path).unwrap());
            let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
            let meta = reader.metadata();
            let groups: Vec<i64> = meta.row_groups().iter().map(|g| g.num_rows()).collect();
            assert_eq!(groups, vec![10_000, 10_000, 5_000], "threads {threads}");
            for g in meta.row_groups() {
                let (id, x) = (g.column(0), g.column(1));
                // Integers keep the dictionary, floats do not have one.
                assert!(id.dictionary_page_offset().is_some(), "id: {:?}", id.encodings().collect::<Vec<_>>());
                assert!(x.dictionary_page_offset().is_none(), "x: {:?}", x.encodings().collect::<Vec<_>>());
                assert!(x.encodings().all(|e| e != Encoding::PLAIN_DICTIONARY && e != Encoding::RLE_DICTIONARY));
                // Statistics kept.
                let stats = x.statistics().expect("column chunk statistics");
                assert_eq!(stats.null_count_opt(), Some(0));
            }
            // The page index too (row ranges inside row groups read only their pages).
            let opts = parquet::file::serialized_reader::ReadOptionsBuilder::new().with_page_index().build();
            let indexed = SerializedFileReader::new_with_options(File::open(&path).unwrap(), opts).unwrap();
            let index = indexed.metadata().page_index().expect("a page index");
            assert!(index.offset_index(0, 1).is_some_and(|o| !o.page_locations().is_empty()));
            assert_eq!(read_parquet(&path, &b.schema()), b);
        }
        assert!(files.windows(2).all(|w| w[0] == w[1]), "the bytes depend on the threads");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[cfg(feature = "parquet")]
    fn float_columns_written_from_their_values_give_arrow_rs_own_file() {
        use arrow_array::{Float32Array, Int8Array};
        let dir = std::env::temp_dir().join(format!("gang-writer-floats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let n = 25_000usize;
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Float32, true),
            Field::new("b", DataType::Float32, true),
            Field::new("c", DataType::Float64, false),
            Field::new("d", DataType::Float64, true),
            Field::new("y", DataType::Int8, true),
        ]));
        let f = |i: usize| ((i * 7919) % 1000) as f32 * 0.25 - 100.0;
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                // No nulls, NaN and infinities among the values.
                Arc::new(Float32Array::from_iter_values((0..n).map(|i| match i % 5000 {
                    17 => f32::NAN,
                    18 => f32::INFINITY,
                    19 => f32::NEG_INFINITY,
                    _ => f(i),
                }))),
                // Every third value null.
                Arc::new(Float32Array::from_iter((0..n).map(|i| (i % 3 != 0).then(|| f(i))))),
                Arc::new(Float64Array::from_iter_values((0..n).map(|i| f64::from(f(i)) * 1e-3))),
                // Null from row 20,000 on: the last two batches hold nulls only.
                Arc::new(Float64Array::from_iter((0..n).map(|i| (i < 20_000).then(|| f64::from(f(i)))))),
                Arc::new(Int8Array::from_iter_values((0..n).map(|i| (i % 2) as i8))),
            ],
        )
        .unwrap();
        // Cuts that do not fall on page boundaries, one batch over a page long.
        let cuts = [(0, 3_000), (3_000, 21_000), (24_000, 1), (24_001, 999)];
        let ours = dir.join("ours.parquet");
        let mut files = Vec::new();
        for threads in [1, 3] {
            let mut sink = ParquetSink::create(&ours, &schema, ParquetCompression::Snappy).unwrap();
            assert_eq!(sink.floats, vec![true, true, true, true, false]);
            sink.threads = threads;
            let mut sink: Box<dyn BatchSink> = Box::new(sink);
            for (off, len) in cuts {
                sink.write(&b.slice(off, len)).unwrap();
            }
            sink.finish().unwrap();
            files.push(std::fs::read(&ours).unwrap());
        }
        // arrow-rs's ArrowWriter, with the same properties and the same batches.
        let theirs = dir.join("theirs.parquet");
        let props = parquet_properties(&theirs, &schema, ParquetCompression::Snappy).unwrap();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(File::create(&theirs).unwrap(), schema.clone(), Some(props)).unwrap();
        for (off, len) in cuts {
            w.write(&b.slice(off, len)).unwrap();
        }
        w.close().unwrap();
        let theirs = std::fs::read(&theirs).unwrap();
        assert!(files[0] == theirs, "in line: not the bytes arrow-rs writes");
        assert!(files[1] == theirs, "on 3 threads: not the bytes arrow-rs writes");
        let read = read_parquet(&ours, &schema);
        // Same nulls, and the same bits in every valid slot (NaN != NaN).
        let bits = |a: &arrow_array::ArrayRef| -> Vec<Option<u64>> {
            use arrow_array::cast::AsArray;
            use arrow_array::types::{Float32Type, Float64Type, Int8Type};
            match a.data_type() {
                DataType::Float32 => {
                    a.as_primitive::<Float32Type>().iter().map(|v| v.map(|v| v.to_bits().into())).collect()
                }
                DataType::Float64 => a.as_primitive::<Float64Type>().iter().map(|v| v.map(f64::to_bits)).collect(),
                _ => a.as_primitive::<Int8Type>().iter().map(|v| v.map(|v| v as u64)).collect(),
            }
        };
        for (x, y) in read.columns().iter().zip(b.columns()) {
            assert_eq!(bits(x), bits(y));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[cfg(feature = "parquet")]
    fn a_batch_of_another_schema_is_refused_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("gang-writer-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.parquet");
        let b = batch(3);
        let mut sink = open_sink(OutputFormat::default(), &path, &b.schema()).unwrap();
        let other = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("y", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1, 2]))],
        )
        .unwrap();
        let e = sink.write(&other).unwrap_err().to_string();
        assert!(e.contains("x.parquet"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
