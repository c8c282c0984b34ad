//! Arrow IPC files: the footer for planning (rows per record batch from the message
//! headers, without reading the bodies), record-batch ranges into batches.

use super::format::{FileInfo, Format};
use super::{assembled, is_hive_key, partition_error, BatchIter, Partition, PlanOptions, Slice};
use crate::error::{Error, Result};
use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

const MAGIC: &[u8] = b"ARROW1";

fn not_ipc(detail: impl std::fmt::Display) -> String {
    format!(
        "not a readable Arrow IPC file ({detail}); the file may be truncated, an IPC stream rather \
         than a file, or not Arrow at all: rewrite it with an IPC FileWriter, or remove it from the input"
    )
}

/// Schema and record batches (rows, body bytes) from the footer and message headers.
pub(crate) fn file_info(path: &Path) -> Result<FileInfo> {
    let footer_err = |d: String| Error::input(path, Some("footer".into()), not_ipc(d));
    let mut file = File::open(path).map_err(|e| Error::input(path, None, format!("cannot open: {e}")))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < 10 + MAGIC.len() as u64 {
        return Err(footer_err(format!("only {len} bytes")));
    }
    let mut tail = [0u8; 10];
    read_at(&mut file, len - 10, &mut tail).map_err(|e| footer_err(e.to_string()))?;
    let footer_len = arrow_ipc::reader::read_footer_length(tail).map_err(|e| footer_err(e.to_string()))? as u64;
    if footer_len + 10 > len {
        return Err(footer_err(format!("footer of {footer_len} bytes in a file of {len}")));
    }
    let mut footer_buf = vec![0u8; footer_len as usize];
    read_at(&mut file, len - 10 - footer_len, &mut footer_buf).map_err(|e| footer_err(e.to_string()))?;
    let footer = arrow_ipc::root_as_footer(&footer_buf).map_err(|e| footer_err(e.to_string()))?;
    let fb_schema = footer.schema().ok_or_else(|| footer_err("no schema".into()))?;
    let schema = arrow_ipc::convert::try_fb_to_schema(fb_schema).map_err(|e| footer_err(e.to_string()))?;
    let mut pieces = Vec::new();
    for (i, block) in footer.recordBatches().into_iter().flatten().enumerate() {
        let loc = || Some(format!("record batch {i}"));
        let meta_len = usize::try_from(block.metaDataLength()).unwrap_or(0);
        let offset = u64::try_from(block.offset()).unwrap_or(u64::MAX);
        if meta_len < 8 || offset.saturating_add(meta_len as u64) > len {
            return Err(Error::input(path, loc(), not_ipc("record batch block outside the file")));
        }
        let mut meta = vec![0u8; meta_len];
        read_at(&mut file, offset, &mut meta).map_err(|e| Error::input(path, loc(), not_ipc(e)))?;
        // Encapsulated message: [0xFFFFFFFF] <i32 length> <flatbuffer>, or the legacy form
        // without the continuation marker.
        let body = if meta[..4] == [0xff; 4] { &meta[8..] } else { &meta[4..] };
        let rows = arrow_ipc::root_as_message(body)
            .ok()
            .and_then(|m| m.header_as_record_batch())
            .map(|rb| rb.length())
            .ok_or_else(|| Error::input(path, loc(), not_ipc("unreadable record batch header")))?;
        pieces.push((rows.max(0) as u64, block.bodyLength().max(0) as u64));
    }
    Ok(FileInfo { schema: Schema::new(schema.fields().clone()), pieces, datasets: Vec::new() })
}

fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// The batches of record batches `p.slice`, decoding only the columns of `schema`; record
/// batches longer than the batch size are sliced (without copying).
pub(crate) fn read(p: &Partition, schema: &SchemaRef, opts: &PlanOptions) -> Result<BatchIter> {
    let Slice::Batches(range) = &p.slice else {
        return Err(partition_error(p, "an Arrow IPC partition must cover record batches"));
    };
    let file = File::open(&p.file).map_err(|e| partition_error(p, format!("cannot open: {e}")))?;
    let mut inner = BufReader::new(file);
    // The full schema first, to turn column names into indices.
    let probe = arrow_ipc::reader::FileReader::try_new(&mut inner, None).map_err(|e| partition_error(p, not_ipc(e)))?;
    let (file_schema, num_batches) = (probe.schema(), probe.num_batches());
    drop(probe);
    let mut projection = Vec::new();
    for f in schema.fields().iter().filter(|f| !is_hive_key(p, f.name())) {
        projection.push(file_schema.index_of(f.name()).map_err(|_| {
            partition_error(p, format!("no column {:?} (the file changed since the plan was made?)", f.name()))
        })?);
    }
    if range.end > num_batches {
        return Err(partition_error(
            p,
            format!("the file has {num_batches} record batches (it changed since the plan was made); plan again"),
        ));
    }
    let mut reader =
        arrow_ipc::reader::FileReader::try_new(inner, Some(projection)).map_err(|e| partition_error(p, not_ipc(e)))?;
    if range.start < range.end {
        reader.set_index(range.start).map_err(|e| partition_error(p, e))?;
    }
    let size = opts.batch_size;
    let batches = assembled(reader.take(range.len()), p, schema);
    Ok(Box::new(batches.flat_map(move |b| -> Vec<Result<RecordBatch>> {
        match b {
            Ok(b) if b.num_rows() > size => {
                (0..b.num_rows()).step_by(size).map(|s| Ok(b.slice(s, size.min(b.num_rows() - s)))).collect()
            }
            other => vec![other],
        }
    })))
}

/// The Ipc format of the data plane.
pub(crate) struct Ipc;

impl Format for Ipc {
    fn file_info(&self, path: &Path, _datasets: &[String], _opts: &PlanOptions) -> Result<FileInfo> {
        file_info(path)
    }

    fn read(&self, p: &Partition, schema: &SchemaRef, opts: &PlanOptions) -> Result<BatchIter> {
        read(p, schema, opts)
    }
}
