//! The Arrow C Data Interface, read in place: the caller's `struct ArrowArray` and
//! `struct ArrowSchema` are borrowed for the duration of a call (gang neither moves nor
//! releases them) and their buffers are read where they lie.

use std::ffi::{c_char, c_void, CStr};

use crate::{Fail, R};

/// `struct ArrowSchema` of the Arrow C Data Interface.
#[repr(C)]
pub struct ArrowSchema {
    format: *const c_char,
    name: *const c_char,
    metadata: *const c_char,
    flags: i64,
    n_children: i64,
    children: *mut *mut ArrowSchema,
    dictionary: *mut ArrowSchema,
    release: Option<unsafe extern "C" fn(*mut ArrowSchema)>,
    private_data: *mut c_void,
}

/// `struct ArrowArray` of the Arrow C Data Interface.
#[repr(C)]
pub struct ArrowArray {
    length: i64,
    null_count: i64,
    offset: i64,
    n_buffers: i64,
    n_children: i64,
    buffers: *mut *const c_void,
    children: *mut *mut ArrowArray,
    dictionary: *mut ArrowArray,
    release: Option<unsafe extern "C" fn(*mut ArrowArray)>,
    private_data: *mut c_void,
}

/// A borrowed (array, schema) pair, checked to be live.
#[derive(Clone, Copy)]
struct Node<'a> {
    array: &'a ArrowArray,
    schema: &'a ArrowSchema,
    what: &'a str,
}

impl<'a> Node<'a> {
    fn new(array: *const ArrowArray, schema: *const ArrowSchema, what: &'a str) -> R<Node<'a>> {
        // SAFETY: non-NULL pointers to the caller's structs, alive during the call (the
        // header's contract).
        let (array, schema) = unsafe { (array.as_ref(), schema.as_ref()) };
        let (Some(array), Some(schema)) = (array, schema) else {
            return Err(Fail::arg(format!("{what}: the ArrowArray or its ArrowSchema is NULL")));
        };
        if array.release.is_none() || schema.release.is_none() {
            return Err(Fail::arg(format!("{what}: the ArrowArray or ArrowSchema was released (release is NULL)")));
        }
        if schema.format.is_null() {
            return Err(Fail::arg(format!("{what}: the ArrowSchema has no format")));
        }
        if array.length < 0 || array.offset < 0 {
            return Err(Fail::arg(format!("{what}: negative length or offset")));
        }
        Ok(Node { array, schema, what })
    }

    fn format(&self) -> &'a str {
        // SAFETY: checked non-NULL in `new`; the format is NUL-terminated per the interface.
        unsafe { CStr::from_ptr(self.schema.format) }.to_str().unwrap_or("?")
    }

    fn child(&self, i: usize) -> R<Node<'a>> {
        let n = self.array.n_children.min(self.schema.n_children);
        if i as i64 >= n || self.array.children.is_null() || self.schema.children.is_null() {
            return Err(Fail::arg(format!("{}: child {i} missing", self.what)));
        }
        // SAFETY: `children` holds n_children pointers (the interface's contract).
        let (a, s) = unsafe { (*self.array.children.add(i), *self.schema.children.add(i)) };
        Node::new(a, s, self.what)
    }

    fn buffer(&self, i: usize) -> *const c_void {
        if (i as i64) >= self.array.n_buffers || self.array.buffers.is_null() {
            return std::ptr::null();
        }
        // SAFETY: `buffers` holds n_buffers pointers (the interface's contract).
        unsafe { *self.array.buffers.add(i) }
    }

    /// Refuses nulls: a model takes no missing values.
    fn no_nulls(&self) -> R<()> {
        if self.array.null_count != 0 && !self.buffer(0).is_null() {
            return Err(Fail::arg(format!(
                "{}: the array holds nulls (null_count {}): fill or drop them first",
                self.what, self.array.null_count
            )));
        }
        Ok(())
    }

    /// The `first..first + len` values of a primitive array of `format`, in place.
    fn values<T>(&self, format: &str, first: usize, len: usize) -> R<&'a [T]> {
        if self.format() != format {
            return Err(Fail::arg(format!(
                "{}: Arrow format {:?} where {format:?} was expected",
                self.what,
                self.format()
            )));
        }
        self.no_nulls()?;
        let start = self.array.offset as usize + first;
        if first + len > self.array.length as usize {
            return Err(Fail::arg(format!(
                "{}: {} values where {} are needed",
                self.what,
                self.array.length,
                first + len
            )));
        }
        if len == 0 {
            return Ok(&[]);
        }
        let data = self.buffer(1).cast::<T>();
        if data.is_null() || !(data as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return Err(Fail::arg(format!("{}: the data buffer is NULL or misaligned", self.what)));
        }
        // SAFETY: a primitive array's buffer 1 holds offset + length values (the interface's
        // contract), and start + len <= offset + length.
        Ok(unsafe { std::slice::from_raw_parts(data.add(start), len) })
    }
}

/// Feature rows, as the caller's Arrow array holds them.
pub(crate) enum Features<'a> {
    /// Row-major, `rows * cols` values: a `FixedSizeList<float32>[cols]` array, in place.
    RowMajor(&'a [f32]),
    /// One slice per column: a struct array of `float32` columns.
    Columns(Vec<&'a [f32]>),
}

/// Reads `array`: a `FixedSizeList<float32>` of the row width (`+w:N`, read in place) or a
/// struct of `float32` columns (`+s`). Returns (rows, cols, features).
pub(crate) fn features<'a>(array: *const ArrowArray, schema: *const ArrowSchema) -> R<(usize, usize, Features<'a>)> {
    let node = Node::new(array, schema, "features")?;
    let rows = node.array.length as usize;
    let format = node.format();
    if let Some(width) = format.strip_prefix("+w:") {
        let cols: usize =
            width.parse().map_err(|_| Fail::arg(format!("features: bad fixed-size list format {format:?}")))?;
        node.no_nulls()?;
        let child = node.child(0)?;
        let first = node.array.offset as usize * cols;
        let values = child.values::<f32>("f", first, rows * cols)?;
        return Ok((rows, cols, Features::RowMajor(values)));
    }
    if format == "+s" {
        node.no_nulls()?;
        let cols = node.array.n_children.max(0) as usize;
        let columns = (0..cols)
            .map(|i| node.child(i)?.values::<f32>("f", node.array.offset as usize, rows))
            .collect::<R<Vec<_>>>()?;
        return Ok((rows, cols, Features::Columns(columns)));
    }
    Err(Fail::arg(format!(
        "features: Arrow format {format:?}: pass a FixedSizeList<float32> (format \"+w:N\", one list per row) or a \
         struct of float32 columns (\"+s\")"
    )))
}

/// Labels as the caller's Arrow array holds them.
pub(crate) enum Labels<'a> {
    /// `float32` values (regression, or soft binary labels).
    F32(&'a [f32]),
    /// `int64` classes.
    I64(&'a [i64]),
    /// `int32` classes.
    I32(&'a [i32]),
}

/// Reads a label array: `float32` (`f`), `int64` (`l`) or `int32` (`i`).
pub(crate) fn labels<'a>(array: *const ArrowArray, schema: *const ArrowSchema) -> R<Labels<'a>> {
    let node = Node::new(array, schema, "labels")?;
    let n = node.array.length as usize;
    match node.format() {
        "f" => Ok(Labels::F32(node.values("f", 0, n)?)),
        "l" => Ok(Labels::I64(node.values("l", 0, n)?)),
        "i" => Ok(Labels::I32(node.values("i", 0, n)?)),
        other => Err(Fail::arg(format!(
            "labels: Arrow format {other:?}: pass float32 (\"f\") values or int64 (\"l\") / int32 (\"i\") classes"
        ))),
    }
}
