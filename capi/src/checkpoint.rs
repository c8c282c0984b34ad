//! Checkpoints of the simulation's own buffers: named memory regions, saved and restored
//! in place with the discipline of gang's checkpoint store (a shard per rank, fsync, a
//! vote, the manifest, `LATEST`, fallback to an older checkpoint when the newest is
//! damaged). The shards are safetensors files: the fields load in numpy.

use std::ffi::{c_char, c_int, c_void};

use gang::checkpoint::{Dtype, Meta, TensorMut, TensorRef};
use gang::CheckpointStore;

use crate::{agree_args, c_str, entry, on_gang, out_ptr, slice, Fail, R};
use crate::{gang_t, GANG_OK};

/// 32-bit float (`float`, `real(4)`).
pub const GANG_F32: c_int = 1;
/// 64-bit float (`double`, `real(8)`).
pub const GANG_F64: c_int = 2;
/// 32-bit signed integer.
pub const GANG_I32: c_int = 3;
/// 64-bit signed integer.
pub const GANG_I64: c_int = 4;
/// Byte.
pub const GANG_U8: c_int = 5;

pub(crate) fn dtype(code: c_int) -> R<Dtype> {
    Ok(match code {
        GANG_F32 => Dtype::F32,
        GANG_F64 => Dtype::F64,
        GANG_I32 => Dtype::I32,
        GANG_I64 => Dtype::I64,
        GANG_U8 => Dtype::U8,
        other => {
            return Err(Fail::arg(format!(
                "unknown element type {other}: use GANG_F32, GANG_F64, GANG_I32, GANG_I64 or GANG_U8"
            )))
        }
    })
}

/// A registered region: the caller's memory, kept as a raw pointer until it is replaced or
/// the handle freed.
struct Region {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: *mut u8,
    bytes: usize,
    sharded: bool,
    /// For a trainer's regions: the trainer's token, which keeps it from being freed
    /// while this handle points into it.
    _owner: Option<std::rc::Rc<()>>,
}

/// Checkpoints of named memory regions of the simulation, in one directory.
pub struct gang_checkpoint_t {
    pub(crate) gang: *const gang_t,
    store: CheckpointStore,
    regions: Vec<Region>,
}

pub(crate) fn on_checkpoint(ck: *mut gang_checkpoint_t, f: impl FnOnce(&gang_t, &mut gang_checkpoint_t) -> R) -> c_int {
    // SAFETY: a non-NULL handle comes from gang_checkpoint_new and was not freed (the
    // caller's contract).
    let Some(c) = (unsafe { ck.as_mut() }) else {
        return entry(|| Err(Fail::arg("the checkpoint handle is NULL: call gang_checkpoint_new first")));
    };
    let g = c.gang;
    on_gang(g, |gang| f(gang, c))
}

/// Opens (creating it if needed) the checkpoint directory `dir`, keeping the newest `keep`
/// checkpoints (at least 1), and stores the handle in `*out`. Collective: every rank
/// passes the same directory, on a file system they all see.
#[no_mangle]
pub unsafe extern "C" fn gang_checkpoint_new(
    g: *mut gang_t,
    dir: *const c_char,
    keep: c_int,
    out: *mut *mut gang_checkpoint_t,
) -> c_int {
    on_gang(g, |gang| {
        let out = out_ptr(out, "out (where the handle goes)")?;
        *out = std::ptr::null_mut();
        let dir = c_str(dir, "dir")?;
        if dir.is_empty() {
            return Err(Fail::arg("dir is empty: name the checkpoint directory"));
        }
        if keep < 1 {
            return Err(Fail::arg(format!("keep is {keep}: keep at least 1 checkpoint")));
        }
        let store = CheckpointStore::new(dir, keep as usize)?;
        gang.adopt_child();
        *out = Box::into_raw(Box::new(gang_checkpoint_t { gang, store, regions: Vec::new() }));
        Ok(())
    })
}

/// Registers the region `name`: `ndim` dimensions of `shape` (C order: the last dimension
/// varies fastest; a Fortran array `a(n1, n2)` is `{n2, n1}`) of elements of type `dtype`
/// (GANG_F32, ...) at `data`. `sharded` non-zero: each rank's own part (a subdomain); zero:
/// the same on every rank (rank 0's is saved; every rank's is restored).
///
/// gang keeps `data`: it must stay valid, and be the memory to save and restore into, at
/// every gang_checkpoint and gang_restart until the region is registered again under the
/// same name (which replaces it) or the handle is freed. The data is read only during
/// gang_checkpoint and written only during gang_restart. Every rank registers the same
/// names, types and (for replicated regions) shapes.
#[no_mangle]
pub unsafe extern "C" fn gang_checkpoint_region(
    ck: *mut gang_checkpoint_t,
    name: *const c_char,
    data: *mut c_void,
    dtype_code: c_int,
    ndim: c_int,
    shape: *const i64,
    sharded: c_int,
) -> c_int {
    on_checkpoint(ck, |_, c| {
        let name = c_str(name, "name")?;
        if name.is_empty() {
            return Err(Fail::arg("the region name is empty"));
        }
        let dtype = dtype(dtype_code)?;
        let shape = slice(shape, i64::from(ndim), "shape")?;
        let dims: Vec<usize> = shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| Fail::arg(format!("region {name}: negative dimension in shape {shape:?}")))?;
        let elements = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let bytes = elements
            .and_then(|e| e.checked_mul(dtype.size()))
            .ok_or_else(|| Fail::arg(format!("region {name}: shape {shape:?} overflows")))?;
        if data.is_null() && bytes > 0 {
            return Err(Fail::arg(format!("region {name}: data is NULL but the shape holds {bytes} bytes")));
        }
        if !(data as usize).is_multiple_of(dtype.size()) {
            return Err(Fail::arg(format!("region {name}: data is not aligned for {}", dtype.name())));
        }
        c.register(Region {
            name: name.to_string(),
            dtype,
            shape: dims,
            data: data.cast(),
            bytes,
            sharded: sharded != 0,
            _owner: None,
        });
        Ok(())
    })
}

impl gang_checkpoint_t {
    fn register(&mut self, region: Region) {
        match self.regions.iter_mut().find(|r| r.name == region.name) {
            Some(r) => *r = region,
            None => self.regions.push(region),
        }
    }

    /// Registers `data` (replicated, `F32` or `I64` elements) as the region `name` of a
    /// trainer whose `owner` token it keeps.
    pub(crate) fn register_owned(
        &mut self,
        name: String,
        dtype: Dtype,
        data: *mut u8,
        elements: usize,
        owner: &std::rc::Rc<()>,
    ) {
        self.register(Region {
            name,
            dtype,
            shape: vec![elements],
            data,
            bytes: elements * dtype.size(),
            sharded: false,
            _owner: Some(owner.clone()),
        });
    }
}

impl Region {
    fn bytes(&self) -> &[u8] {
        if self.bytes == 0 {
            return &[];
        }
        // SAFETY: gang_checkpoint_region's contract: `data` holds `bytes` bytes, valid and
        // not written by anyone else during the call that reads them.
        unsafe { std::slice::from_raw_parts(self.data, self.bytes) }
    }
}

/// Saves every registered region as the checkpoint of `step`. Collective. On return the
/// checkpoint is committed on every rank (written, fsynced, voted, named by `LATEST`), or
/// every rank has an error and `LATEST` still names the previous checkpoint.
#[no_mangle]
pub unsafe extern "C" fn gang_checkpoint(ck: *mut gang_checkpoint_t, step: i64) -> c_int {
    on_checkpoint(ck, |gang, c| {
        let checked = u64::try_from(step).map_err(|_| Fail::arg(format!("step {step} is negative"))).and_then(|s| {
            if c.regions.is_empty() {
                return Err(Fail::state("no region is registered: call gang_checkpoint_region before gang_checkpoint"));
            }
            Ok(s)
        });
        let step = agree_args(gang, "gang_checkpoint", checked)?;
        let refs = |sharded: bool| -> R<Vec<TensorRef<'_>>> {
            c.regions
                .iter()
                .filter(|r| r.sharded == sharded)
                .map(|r| Ok(TensorRef::new(&r.name, r.dtype, r.shape.clone(), r.bytes())?))
                .collect()
        };
        let (replicated, sharded) = (refs(false)?, refs(true)?);
        let meta = Meta { data_cursor: step, extra: serde_json::json!({ "writer": "libgang" }), ..Meta::default() };
        Ok(c.store.save_refs(gang.ctx(), step, &meta, &replicated, &sharded)?)
    })
}

/// Restores the newest usable checkpoint into the registered regions: `*found` is 1 and
/// `*step` its step, or `*found` is 0 (and the regions untouched) when the directory holds
/// no checkpoint. Collective. A damaged newest checkpoint is passed over (rank 0 says so on
/// stderr) for the one before. The regions must be the ones saved: same names, types and
/// shapes; sharded ones only on the number of ranks that saved them.
#[no_mangle]
pub unsafe extern "C" fn gang_restart(ck: *mut gang_checkpoint_t, step: *mut i64, found: *mut c_int) -> c_int {
    on_checkpoint(ck, |gang, c| {
        let checked = (|| {
            let outs = (out_ptr(step, "step")?, out_ptr(found, "found")?);
            if c.regions.is_empty() {
                return Err(Fail::state("no region is registered: call gang_checkpoint_region before gang_restart"));
            }
            Ok(outs)
        })();
        let (step, found) = agree_args(gang, "gang_restart", checked)?;
        *found = 0;
        let mut targets: Vec<TensorMut<'_>> = Vec::with_capacity(c.regions.len());
        for Region { name, dtype, shape, data, bytes, .. } in c.regions.iter_mut() {
            let buf: &mut [u8] = if *bytes == 0 {
                &mut []
            } else {
                // SAFETY: gang_checkpoint_region's contract: `data` holds `bytes` writable
                // bytes that nothing else accesses during gang_restart.
                unsafe { std::slice::from_raw_parts_mut(*data, *bytes) }
            };
            targets.push(TensorMut::new(name.as_str(), *dtype, shape.clone(), buf)?);
        }
        let Some(restored) = c.store.restore_into(gang.ctx(), &mut targets)? else {
            return Ok(());
        };
        if gang.ctx().rank() == 0 {
            for s in &restored.skipped {
                eprintln!("gang: passed over a checkpoint: {s}");
            }
        }
        *step = restored.step as i64;
        *found = 1;
        Ok(())
    })
}

/// Frees the handle (the checkpoints stay on disk; the regions' memory stays the
/// caller's). NULL is accepted.
#[no_mangle]
pub unsafe extern "C" fn gang_checkpoint_free(ck: *mut gang_checkpoint_t) -> c_int {
    if ck.is_null() {
        return GANG_OK;
    }
    entry(|| {
        // SAFETY: `ck` came from gang_checkpoint_new (Box::into_raw) and is freed once.
        let c = unsafe { Box::from_raw(ck) };
        // SAFETY: the gang outlives its children (gang_finalize refuses while they live).
        if let Some(g) = unsafe { c.gang.as_ref() } {
            g.release_child();
        }
        Ok(())
    })
}
