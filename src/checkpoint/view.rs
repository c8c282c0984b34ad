//! Tensors that live in the caller's memory: [`Dtype`], the borrowed views [`TensorRef`]
//! (to save) and [`TensorMut`] (to restore into), and the byte views of slices of plain
//! numbers they are built from.
//!
//! Data is little-endian element bytes, as in the safetensors files, and views pass the
//! caller's bytes through unchanged. Every target gang supports is little-endian; on a
//! big-endian one this module refuses to compile rather than write files that other
//! readers would misread.

#[cfg(target_endian = "big")]
compile_error!(
    "gang checkpoints store the caller's memory as little-endian bytes; this big-endian target is not supported"
);

use super::Tensor;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The element type of a tensor, as safetensors names it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dtype {
    /// 32-bit IEEE float (`"F32"`, numpy `float32`).
    F32,
    /// 64-bit IEEE float (`"F64"`, numpy `float64`).
    F64,
    /// 32-bit signed integer (`"I32"`, numpy `int32`).
    I32,
    /// 64-bit signed integer (`"I64"`, numpy `int64`).
    I64,
    /// Byte (`"U8"`, numpy `uint8`): raw bytes too.
    U8,
}

impl Dtype {
    /// Every dtype, in declaration order.
    pub const ALL: [Dtype; 5] = [Dtype::F32, Dtype::F64, Dtype::I32, Dtype::I64, Dtype::U8];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::U8 => 1,
        }
    }

    /// The safetensors name: `"F32"`, `"F64"`, `"I32"`, `"I64"`, `"U8"`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I32 => "I32",
            Dtype::I64 => "I64",
            Dtype::U8 => "U8",
        }
    }

    /// The dtype of a safetensors name; `None` for names gang does not support.
    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A plain number type whose slices can be saved and restored in place: `f32`, `f64`,
/// `i32`, `i64`, `u8`. Sealed: each has no padding and every bit pattern is a valid value,
/// which is what makes its byte views sound.
pub trait Element: Copy + sealed::Sealed + 'static {
    /// Its dtype.
    const DTYPE: Dtype;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: Dtype = Dtype::$d;
        }
    )*};
}
element!(f32 => F32, f64 => F64, i32 => I32, i64 => I64, u8 => U8);

/// The bytes of a slice of plain numbers (native order, which is little-endian).
#[allow(unsafe_code)] // The one way to view caller memory as bytes without copying it.
pub(crate) fn bytes_of<T: Element>(s: &[T]) -> &[u8] {
    // SAFETY: `T` is one of f32, f64, i32, i64, u8 (`Element` is sealed): no padding, so
    // all `size_of_val(s)` bytes from `s.as_ptr()` are initialized; u8 has alignment 1;
    // the result borrows `s`, so the memory stays live and unaliased by writers.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// The bytes of a mutable slice of plain numbers, for writing in place.
#[allow(unsafe_code)] // The one way to restore into caller memory without copying it.
pub(crate) fn bytes_of_mut<T: Element>(s: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `bytes_of`; besides, every bit pattern is a valid `T` for these types,
    // so whatever bytes are written leave valid values; the result borrows `s` mutably and
    // exclusively for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// Checks a tensor's name and that `len` bytes are exactly `shape` elements of `dtype`.
pub(crate) fn check(name: &str, dtype: Dtype, shape: &[usize], len: usize) -> Result<()> {
    if name.is_empty() || name == "__metadata__" {
        return Err(Error::InvalidArgument(format!("tensor name {name:?} is empty or reserved")));
    }
    let bytes = shape.iter().try_fold(dtype.size(), |a, &d| a.checked_mul(d));
    if bytes != Some(len) {
        return Err(Error::InvalidArgument(format!(
            "tensor {name:?}: shape {shape:?} of {dtype} needs {} bytes but the data holds {len}",
            bytes.map_or_else(|| "more than usize::MAX".to_string(), |n| n.to_string()),
        )));
    }
    Ok(())
}

/// A tensor in the caller's memory, to save with
/// [`CheckpointStore::save_refs`](super::CheckpointStore::save_refs): its bytes are
/// encoded into the shard file straight from where they are, without a copy.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef<'a> {
    name: &'a str,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: &'a [u8],
}

impl<'a> TensorRef<'a> {
    /// A view of `bytes`: `shape` elements of `dtype`, row-major, little-endian.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the name is empty or reserved (`__metadata__`) or
    /// `bytes` is not exactly `shape` elements of `dtype`.
    pub fn new(name: &'a str, dtype: Dtype, shape: Vec<usize>, bytes: &'a [u8]) -> Result<TensorRef<'a>> {
        check(name, dtype, &shape, bytes.len())?;
        Ok(TensorRef { name, dtype, shape, bytes })
    }

    /// A view of `data` (`f32`, `f64`, `i32`, `i64` or `u8`) of `shape`.
    ///
    /// # Errors
    /// As [`TensorRef::new`].
    pub fn from_slice<T: Element>(name: &'a str, shape: Vec<usize>, data: &'a [T]) -> Result<TensorRef<'a>> {
        TensorRef::new(name, T::DTYPE, shape, bytes_of(data))
    }

    /// A one-dimensional view of `data`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the name is empty or reserved.
    pub fn vector<T: Element>(name: &'a str, data: &'a [T]) -> Result<TensorRef<'a>> {
        TensorRef::from_slice(name, vec![data.len()], data)
    }

    /// The view of an owned `f32` [`Tensor`], unchecked (a [`State`](super::State) is
    /// checked when it is saved, as part of the vote).
    pub(crate) fn of(t: &'a Tensor) -> TensorRef<'a> {
        TensorRef { name: &t.name, dtype: Dtype::F32, shape: t.shape.clone(), bytes: bytes_of(&t.data) }
    }

    /// Its name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// Its element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Its dimensions (empty for a scalar).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Its data: little-endian element bytes, row-major.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub(crate) fn check(&self) -> Result<()> {
        check(self.name, self.dtype, &self.shape, self.bytes.len())
    }
}

impl<'a> From<&'a Tensor> for TensorRef<'a> {
    /// The view of an `f32` tensor (checked when saved).
    fn from(t: &'a Tensor) -> TensorRef<'a> {
        TensorRef::of(t)
    }
}

/// A tensor in the caller's memory to restore into with
/// [`CheckpointStore::restore_into`](super::CheckpointStore::restore_into): the shard
/// file is read straight into its bytes.
#[derive(Debug, PartialEq)]
pub struct TensorMut<'a> {
    name: &'a str,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: &'a mut [u8],
}

impl<'a> TensorMut<'a> {
    /// A target over `bytes`: `shape` elements of `dtype`, row-major, little-endian.
    ///
    /// # Errors
    /// As [`TensorRef::new`].
    pub fn new(name: &'a str, dtype: Dtype, shape: Vec<usize>, bytes: &'a mut [u8]) -> Result<TensorMut<'a>> {
        check(name, dtype, &shape, bytes.len())?;
        Ok(TensorMut { name, dtype, shape, bytes })
    }

    /// A target over `data` (`f32`, `f64`, `i32`, `i64` or `u8`) of `shape`.
    ///
    /// # Errors
    /// As [`TensorRef::new`].
    pub fn from_slice<T: Element>(name: &'a str, shape: Vec<usize>, data: &'a mut [T]) -> Result<TensorMut<'a>> {
        TensorMut::new(name, T::DTYPE, shape, bytes_of_mut(data))
    }

    /// A one-dimensional target over `data`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the name is empty or reserved.
    pub fn vector<T: Element>(name: &'a str, data: &'a mut [T]) -> Result<TensorMut<'a>> {
        TensorMut::from_slice(name, vec![data.len()], data)
    }

    /// The target of an owned `f32` [`Tensor`] (whose data fits its shape).
    pub(crate) fn of(t: &'a mut Tensor) -> TensorMut<'a> {
        TensorMut { name: &t.name, dtype: Dtype::F32, shape: t.shape.clone(), bytes: bytes_of_mut(&mut t.data) }
    }

    /// Its name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// Its element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Its dimensions (empty for a scalar).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Its data: little-endian element bytes, row-major.
    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }

    /// Its data, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.bytes
    }

    /// A read-only view of the same memory.
    pub fn as_ref(&self) -> TensorRef<'_> {
        TensorRef { name: self.name, dtype: self.dtype, shape: self.shape.clone(), bytes: self.bytes }
    }

    /// The same target for a shorter borrow.
    pub(crate) fn reborrow(&mut self) -> TensorMut<'_> {
        TensorMut { name: self.name, dtype: self.dtype, shape: self.shape.clone(), bytes: self.bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_the_little_endian_bytes_and_sizes_are_checked() {
        let v = [1.5f64, -2.0];
        let r = TensorRef::from_slice("x", vec![2], &v).unwrap();
        assert_eq!(r.dtype(), Dtype::F64);
        assert_eq!(r.bytes(), [1.5f64.to_le_bytes(), (-2.0f64).to_le_bytes()].concat());
        let e = TensorRef::from_slice("x", vec![3], &v).unwrap_err().to_string();
        assert!(e.contains("\"x\"") && e.contains("needs 24 bytes") && e.contains("holds 16"), "{e}");
        assert!(TensorRef::new("__metadata__", Dtype::U8, vec![0], &[]).is_err());
        assert!(TensorRef::new("huge", Dtype::U8, vec![usize::MAX, 2], &[]).is_err());
        let mut w = [0i32; 3];
        let mut t = TensorMut::vector("w", &mut w).unwrap();
        t.bytes_mut()[4..8].copy_from_slice(&(-7i32).to_le_bytes());
        assert_eq!(w, [0, -7, 0]);
        for d in Dtype::ALL {
            assert_eq!(Dtype::from_name(d.name()), Some(d));
        }
        assert_eq!(Dtype::from_name("BF16"), None);
    }
}
