//! Analysis output: the simulation's arrays as a partitioned Parquet dataset, one part per
//! rank, committed exactly once by the same committer as gang's map stages.

use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch, UInt8Array};
use arrow_schema::{DataType, Field, Schema};
use gang::checkpoint::Dtype;
use gang::stage::{OutputCommitter, OutputFormat, ParquetCompression};

use crate::checkpoint::dtype;
use crate::gang_t;
use crate::{agree_args, c_str, on_gang, slice, Fail, R};

/// Column `i` of this rank's rows, copied into an Arrow array.
///
/// # Safety
/// `data` holds `rows` elements of `ty`.
unsafe fn column(name: &str, ty: Dtype, data: *const c_void, rows: i64) -> R<(Field, ArrayRef)> {
    let what = format!("column {name}");
    let (dt, array): (DataType, ArrayRef) = match ty {
        Dtype::F32 => {
            (DataType::Float32, Arc::new(Float32Array::from(slice(data.cast::<f32>(), rows, &what)?.to_vec())))
        }
        Dtype::F64 => {
            (DataType::Float64, Arc::new(Float64Array::from(slice(data.cast::<f64>(), rows, &what)?.to_vec())))
        }
        Dtype::I32 => (DataType::Int32, Arc::new(Int32Array::from(slice(data.cast::<i32>(), rows, &what)?.to_vec()))),
        Dtype::I64 => (DataType::Int64, Arc::new(Int64Array::from(slice(data.cast::<i64>(), rows, &what)?.to_vec()))),
        Dtype::U8 => (DataType::UInt8, Arc::new(UInt8Array::from(slice(data.cast::<u8>(), rows, &what)?.to_vec()))),
        other => return Err(Fail::arg(format!("{what}: element type {} is not supported here", other.name()))),
    };
    Ok((Field::new(name, dt, false), array))
}

/// Writes this rank's `rows` rows of the `ncols` columns `columns[i]` (named `names[i]`, of
/// element types `dtypes[i]`: GANG_F32, GANG_F64, GANG_I32, GANG_I64, GANG_U8) as part
/// `part-<rank>.parquet` of the dataset `dir` (snappy), and commits the dataset once every
/// rank's part is durable: `_SUCCESS` (gang's manifest: every part's rows, size and CRC)
/// appears last, and until then no reader can mistake the directory for a result.
/// Collective: every rank passes the same directory, names and types (its own rows).
///
/// Exactly once: when `dir` already holds this same output committed (a restarted
/// simulation writing the snapshot of a step again), nothing is written and `*written`
/// (if not NULL) is 0; an interrupted write of it is resumed, keeping the parts already
/// committed; otherwise `*written` is 1. A directory holding something else is refused
/// (GANG_ERR_IO, naming it). The columns are copied once, into Arrow arrays.
#[no_mangle]
pub unsafe extern "C" fn gang_write_parquet(
    g: *mut gang_t,
    dir: *const c_char,
    rows: i64,
    ncols: c_int,
    names: *const *const c_char,
    dtypes: *const c_int,
    columns: *const *const c_void,
    written: *mut c_int,
) -> c_int {
    on_gang(g, |gang| {
        let checked = (|| {
            let dir = c_str(dir, "dir")?;
            if ncols < 1 {
                return Err(Fail::arg(format!("ncols is {ncols}: write at least one column")));
            }
            let names = slice(names, i64::from(ncols), "names")?;
            let dtypes = slice(dtypes, i64::from(ncols), "dtypes")?;
            let columns = slice(columns, i64::from(ncols), "columns")?;
            let mut fields = Vec::with_capacity(names.len());
            let mut arrays = Vec::with_capacity(names.len());
            for i in 0..names.len() {
                let name = c_str(names[i], &format!("names[{i}]"))?;
                if fields.iter().any(|f: &Field| f.name() == name) {
                    return Err(Fail::arg(format!("column name {name:?} is given twice")));
                }
                // SAFETY: columns[i] holds `rows` elements of dtypes[i] (the caller's contract).
                let (f, a) = unsafe { column(name, dtype(dtypes[i])?, columns[i], rows) }?;
                fields.push(f);
                arrays.push(a);
            }
            let schema = Arc::new(Schema::new(fields));
            let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| Fail::arg(e.to_string()))?;
            Ok((dir, schema, batch))
        })();
        let (dir, schema, batch) = agree_args(gang, "gang_write_parquet", checked)?;
        let ctx = gang.ctx();
        let (rank, world) = (ctx.rank(), ctx.world());
        // The same output is the same columns from the same number of ranks.
        let shape: Vec<String> = schema.fields().iter().map(|f| format!("{}:{}", f.name(), f.data_type())).collect();
        let fingerprint = format!(
            "libgang-parquet-{:016x}",
            gang::internal::fnv1a64(format!("{}|{world}", shape.join(",")).as_bytes())
        );
        let format = OutputFormat::Parquet { compression: ParquetCompression::Snappy };
        let committer = OutputCommitter::begin(ctx, dir, format, false, &fingerprint)?;
        let fresh = committer.already_complete().is_none();
        if fresh && !committer.is_committed(rank) {
            committer.write_partition(rank, &schema, std::iter::once(Ok(batch)))?;
        }
        committer.finish(ctx, world)?;
        // SAFETY: a non-NULL out-pointer points to a writable int.
        if let Some(w) = unsafe { written.as_mut() } {
            *w = c_int::from(fresh);
        }
        Ok(())
    })
}
