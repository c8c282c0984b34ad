//! One interface over two executors of the kernels: a CUDA device, and the host build of
//! the same sources ([`crate::host`]).
//!
//! Code above this module ([`crate::train`], the GPU check) allocates [`Buf`]s on a
//! [`Device`], copies to and from them, and launches [`Launch`]es built by the typed
//! constructors below (one per kernel of `gpu/kernels/*.cu`, arguments in the order of the
//! kernel's C signature). Every launch checks that each buffer holds the elements the
//! kernel will touch before anything runs, on either executor, so a wrong length is an
//! [`Error::InvalidArgument`], never an out-of-bounds access.
#![allow(unsafe_code)]

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr};

use crate::error::{Error, Result};

/// Threads per block of every launch.
pub const BLOCK_THREADS: u32 = 256;

/// Element types that live in device buffers.
pub trait Elem: Copy + Default + DeviceRepr + cudarc::driver::ValidAsZeroBits + Send + Sync + 'static {}
impl Elem for f32 {}
impl Elem for f64 {}
impl Elem for i64 {}

/// A buffer of `T` on one [`Device`]: a `Vec` for the host executor, device memory for a
/// CUDA device.
#[derive(Debug)]
pub enum Buf<T> {
    /// Host memory (the host executor).
    Host(Vec<T>),
    /// Device memory of a CUDA device.
    Cuda(CudaSlice<T>),
}

impl<T> Buf<T> {
    /// Elements in the buffer.
    pub fn len(&self) -> usize {
        match self {
            Buf::Host(v) => v.len(),
            Buf::Cuda(s) => s.len(),
        }
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer from its start, as a kernel input.
    pub fn all(&self) -> In<'_, T> {
        In { buf: self, off: 0 }
    }

    /// The buffer from element `off`, as a kernel input.
    pub fn at(&self, off: usize) -> In<'_, T> {
        In { buf: self, off }
    }

    /// The buffer from its start, as a kernel output.
    pub fn all_mut(&mut self) -> Out<'_, T> {
        Out { buf: self, off: 0 }
    }

    /// The buffer from element `off`, as a kernel output.
    pub fn at_mut(&mut self, off: usize) -> Out<'_, T> {
        Out { buf: self, off }
    }
}

/// A kernel input: a buffer from an element offset.
#[derive(Debug, Clone, Copy)]
pub struct In<'a, T> {
    buf: &'a Buf<T>,
    off: usize,
}

/// A kernel output: a buffer from an element offset.
#[derive(Debug)]
pub struct Out<'a, T> {
    buf: &'a mut Buf<T>,
    off: usize,
}

/// One argument of a launch, in the order of the kernel's signature. Buffers carry the
/// number of elements the kernel touches from their offset.
#[derive(Debug)]
pub enum Arg<'a> {
    /// `const float*`
    F32(In<'a, f32>, usize),
    /// `float*`
    F32Mut(Out<'a, f32>, usize),
    /// `const double*`
    F64(In<'a, f64>, usize),
    /// `double*`
    F64Mut(Out<'a, f64>, usize),
    /// `const long long*`
    I64(In<'a, i64>, usize),
    /// `int`
    Int(i32),
    /// `float`
    Float(f32),
}

/// A kernel and its arguments, ready to run on a [`Device`].
#[derive(Debug)]
pub struct Launch<'a> {
    /// The kernel's name in the sources (`gang_dense_forward`).
    pub name: &'static str,
    /// Threads to start (the kernel returns at once for indices beyond its work).
    pub threads: usize,
    /// Arguments in the order of the kernel's C signature.
    pub args: Vec<Arg<'a>>,
}

fn int(what: &str, v: usize) -> Result<Arg<'static>> {
    i32::try_from(v)
        .map(Arg::Int)
        .map_err(|_| Error::InvalidArgument(format!("{what} = {v} exceeds what a kernel takes (2^31 - 1)")))
}

fn ceil_div(a: usize, b: usize) -> usize {
    a.div_ceil(b.max(1))
}

/// Every kernel of `gpu/kernels/*.cu`, by name: what the GPU check and the NVRTC test
/// expect to find in the compiled module.
pub const KERNELS: &[&str] = &[
    "gang_gather_rows",
    "gang_gather_values",
    "gang_dense_forward",
    "gang_dense_grad_partial",
    "gang_sum_segments",
    "gang_dense_backward_input",
    "gang_head_regression",
    "gang_head_binary",
    "gang_head_softmax",
    "gang_sigmoid",
    "gang_softmax_rows",
    "gang_sum_rows_f64",
    "gang_accumulate_f64",
    "gang_sgd",
    "gang_sgd_momentum",
    "gang_adam",
];

impl<'a> Launch<'a> {
    /// `dst[r, :] = src[rows[r], :]`, `f` floats per row. Every `rows[r]` must be a row of
    /// `src` (`src_rows` of them): checked on the host executor, the caller's duty on a
    /// device.
    pub fn gather_rows(
        src: In<'a, f32>,
        src_rows: usize,
        rows: In<'a, i64>,
        n: usize,
        f: usize,
        dst: Out<'a, f32>,
    ) -> Result<Launch<'a>> {
        Ok(Launch {
            name: "gang_gather_rows",
            threads: n * f,
            args: vec![
                Arg::F32(src, src_rows * f),
                Arg::I64(rows, n),
                int("n", n)?,
                int("f", f)?,
                Arg::F32Mut(dst, n * f),
            ],
        })
    }

    /// `dst[r] = src[rows[r]]`.
    pub fn gather_values(
        src: In<'a, f32>,
        src_rows: usize,
        rows: In<'a, i64>,
        n: usize,
        dst: Out<'a, f32>,
    ) -> Result<Launch<'a>> {
        Ok(Launch {
            name: "gang_gather_values",
            threads: n,
            args: vec![Arg::F32(src, src_rows), Arg::I64(rows, n), int("n", n)?, Arg::F32Mut(dst, n)],
        })
    }

    /// `z = x w^T + b` (`x` `[n, inp]`, `w` `[out, inp]`), ReLU when `relu`.
    #[allow(clippy::too_many_arguments)]
    pub fn dense_forward(
        x: In<'a, f32>,
        w: In<'a, f32>,
        b: In<'a, f32>,
        n: usize,
        inp: usize,
        out: usize,
        relu: bool,
        z: Out<'a, f32>,
    ) -> Result<Launch<'a>> {
        Ok(Launch {
            name: "gang_dense_forward",
            threads: n * out,
            args: vec![
                Arg::F32(x, n * inp),
                Arg::F32(w, out * inp),
                Arg::F32(b, out),
                int("n", n)?,
                int("in", inp)?,
                int("out", out)?,
                Arg::Int(relu.into()),
                Arg::F32Mut(z, n * out),
            ],
        })
    }

    /// Partial weight and bias gradients per segment of `seg` rows: `partial` is
    /// `[ceil(n / seg), out * inp + out]`.
    pub fn dense_grad_partial(
        d: In<'a, f32>,
        x: In<'a, f32>,
        n: usize,
        inp: usize,
        out: usize,
        seg: usize,
        partial: Out<'a, f32>,
    ) -> Result<Launch<'a>> {
        let len = out * inp + out;
        let segments = ceil_div(n, seg);
        Ok(Launch {
            name: "gang_dense_grad_partial",
            threads: segments * len,
            args: vec![
                Arg::F32(d, n * out),
                Arg::F32(x, n * inp),
                int("n", n)?,
                int("in", inp)?,
                int("out", out)?,
                int("seg", seg.max(1))?,
                Arg::F32Mut(partial, segments * len),
            ],
        })
    }

    /// `out[e] = sum_s partial[s, e]`.
    pub fn sum_segments(partial: In<'a, f32>, segments: usize, len: usize, out: Out<'a, f32>) -> Result<Launch<'a>> {
        Ok(Launch {
            name: "gang_sum_segments",
            threads: len,
            args: vec![
                Arg::F32(partial, segments * len),
                int("segments", segments)?,
                int("len", len)?,
                Arg::F32Mut(out, len),
            ],
        })
    }

    /// `dprev = (d w) * (a > 0)`, `d` `[n, out]`, `w` `[out, inp]`, `a` `[n, inp]`.
    #[allow(clippy::too_many_arguments)]
    pub fn dense_backward_input(
        d: In<'a, f32>,
        w: In<'a, f32>,
        a: In<'a, f32>,
        n: usize,
        inp: usize,
        out: usize,
        dprev: Out<'a, f32>,
    ) -> Result<Launch<'a>> {
        Ok(Launch {
            name: "gang_dense_backward_input",
            threads: n * inp,
            args: vec![
                Arg::F32(d, n * out),
                Arg::F32(w, out * inp),
                Arg::F32(a, n * inp),
                int("n", n)?,
                int("in", inp)?,
                int("out", out)?,
                Arg::F32Mut(dprev, n * inp),
            ],
        })
    }

    /// A head of width 1 (`gang_head_regression` or `gang_head_binary`): per row `d`,
    /// `loss` and `correct` from the logits `z` and targets `t`.
    pub fn head(
        name: &'static str,
        z: In<'a, f32>,
        t: In<'a, f32>,
        n: usize,
        d: Out<'a, f32>,
        loss: Out<'a, f32>,
        correct: Out<'a, f32>,
    ) -> Result<Launch<'a>> {
        if !matches!(name, "gang_head_regression" | "gang_head_binary") {
            return Err(Error::InvalidArgument(format!("{name} is not a head of width 1")));
        }
        Ok(Launch {
            name,
            threads: n,
            args: vec![
                Arg::F32(z, n),
                Arg::F32(t, n),
                int("n", n)?,
                Arg::F32Mut(d, n),
                Arg::F32Mut(loss, n),
                Arg::F32Mut(correct, n),
            ],
        })
    }

    /// The softmax head over `k` logits per row. Every target must be a class below `k`
    /// (the caller checks the labels once, on the host).
    #[allow(clippy::too_many_arguments)]
    pub fn head_softmax(
        z: In<'a, f32>,
        t: In<'a, f32>,
        n: usize,
        k: usize,
        d: Out<'a, f32>,
        loss: Out<'a, f32>,
        correct: Out<'a, f32>,
    ) -> Result<Launch<'a>> {
        Ok(Launch {
            name: "gang_head_softmax",
            threads: n,
            args: vec![
                Arg::F32(z, n * k),
                Arg::F32(t, n),
                int("n", n)?,
                int("k", k)?,
                Arg::F32Mut(d, n * k),
                Arg::F32Mut(loss, n),
                Arg::F32Mut(correct, n),
            ],
        })
    }

    /// Sigmoid in place.
    pub fn sigmoid(z: Out<'a, f32>, n: usize) -> Result<Launch<'a>> {
        Ok(Launch { name: "gang_sigmoid", threads: n, args: vec![Arg::F32Mut(z, n), int("n", n)?] })
    }

    /// Softmax of rows of `k` in place.
    pub fn softmax_rows(z: Out<'a, f32>, n: usize, k: usize) -> Result<Launch<'a>> {
        Ok(Launch {
            name: "gang_softmax_rows",
            threads: n,
            args: vec![Arg::F32Mut(z, n * k), int("n", n)?, int("k", k)?],
        })
    }

    /// `partial[s] = sum` of segment `s` (`seg` rows) of `v`, in double.
    pub fn sum_rows_f64(v: In<'a, f32>, n: usize, seg: usize, partial: Out<'a, f64>) -> Result<Launch<'a>> {
        let segments = ceil_div(n, seg);
        Ok(Launch {
            name: "gang_sum_rows_f64",
            threads: segments,
            args: vec![Arg::F32(v, n), int("n", n)?, int("seg", seg.max(1))?, Arg::F64Mut(partial, segments)],
        })
    }

    /// `*acc += sum(partial[..count])`, in order.
    pub fn accumulate_f64(partial: In<'a, f64>, count: usize, acc: Out<'a, f64>) -> Result<Launch<'a>> {
        Ok(Launch {
            name: "gang_accumulate_f64",
            threads: 1,
            args: vec![Arg::F64(partial, count), int("count", count)?, Arg::F64Mut(acc, 1)],
        })
    }

    /// Plain SGD: `p -= lr (scale g + wd p)`.
    pub fn sgd(p: Out<'a, f32>, g: In<'a, f32>, len: usize, lr: f32, wd: f32, scale: f32) -> Result<Launch<'a>> {
        Ok(Launch {
            name: "gang_sgd",
            threads: len,
            args: vec![
                Arg::F32Mut(p, len),
                Arg::F32(g, len),
                int("len", len)?,
                Arg::Float(lr),
                Arg::Float(wd),
                Arg::Float(scale),
            ],
        })
    }

    /// SGD with momentum (buffer `b`).
    #[allow(clippy::too_many_arguments)]
    pub fn sgd_momentum(
        p: Out<'a, f32>,
        b: Out<'a, f32>,
        g: In<'a, f32>,
        len: usize,
        lr: f32,
        momentum: f32,
        wd: f32,
        scale: f32,
    ) -> Result<Launch<'a>> {
        Ok(Launch {
            name: "gang_sgd_momentum",
            threads: len,
            args: vec![
                Arg::F32Mut(p, len),
                Arg::F32Mut(b, len),
                Arg::F32(g, len),
                int("len", len)?,
                Arg::Float(lr),
                Arg::Float(momentum),
                Arg::Float(wd),
                Arg::Float(scale),
            ],
        })
    }

    /// One Adam(W) step; `coef` holds `[step_size, inv_sqrt_bc2, shrink, beta1, beta2,
    /// eps, scale]`.
    pub fn adam(
        p: Out<'a, f32>,
        m: Out<'a, f32>,
        v: Out<'a, f32>,
        g: In<'a, f32>,
        len: usize,
        coef: [f32; 7],
    ) -> Result<Launch<'a>> {
        let mut args =
            vec![Arg::F32Mut(p, len), Arg::F32Mut(m, len), Arg::F32Mut(v, len), Arg::F32(g, len), int("len", len)?];
        args.extend(coef.into_iter().map(Arg::Float));
        Ok(Launch { name: "gang_adam", threads: len, args })
    }

    /// Checks every buffer argument against what the kernel touches.
    fn check(&self) -> Result<()> {
        for (i, a) in self.args.iter().enumerate() {
            let (len, off, need) = match a {
                Arg::F32(v, need) => (v.buf.len(), v.off, *need),
                Arg::F32Mut(v, need) => (v.buf.len(), v.off, *need),
                Arg::F64(v, need) => (v.buf.len(), v.off, *need),
                Arg::F64Mut(v, need) => (v.buf.len(), v.off, *need),
                Arg::I64(v, need) => (v.buf.len(), v.off, *need),
                Arg::Int(_) | Arg::Float(_) => continue,
            };
            if off.checked_add(need).is_none_or(|end| end > len) {
                return Err(Error::InvalidArgument(format!(
                    "{}: argument {i} needs {need} elements from offset {off}, but its buffer holds {len}",
                    self.name
                )));
            }
        }
        Ok(())
    }
}

/// Where kernels run.
#[derive(Debug)]
pub enum Device {
    /// The host build of the kernels, one thread index after another (tests, the GPU
    /// check's reference).
    Host,
    /// A CUDA device.
    Cuda(CudaDevice),
}

/// A CUDA device with gang's kernels loaded, and the one stream everything runs on.
#[derive(Debug)]
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    functions: Vec<(&'static str, CudaFunction)>,
    name: String,
    uuid: String,
    compute: (i32, i32),
}

/// Checks that the CUDA driver library can be loaded (cudarc panics on first use
/// otherwise).
pub fn driver_available() -> Result<()> {
    // SAFETY: only tries to open the library by its candidate names; no symbol is called.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::LibraryMissing {
            library: "the CUDA driver (libcuda.so.1)",
            hint: "no NVIDIA driver is installed on this machine, or its libraries are not on the loader's path".into(),
        })
    }
}

/// The number of CUDA devices visible to this process (after `CUDA_VISIBLE_DEVICES`).
///
/// # Errors
/// [`Error::LibraryMissing`] without the driver; [`Error::Driver`] when it cannot count.
pub fn device_count() -> Result<usize> {
    driver_available()?;
    CudaContext::device_count().map(|n| n.max(0) as usize).map_err(|e| Error::driver("counting the CUDA devices", e))
}

/// Formats a CUDA UUID the way `nvidia-smi -L` and `CUDA_VISIBLE_DEVICES` do.
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("GPU-{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

impl CudaDevice {
    /// Opens CUDA device `ordinal` (among those visible to the process), compiles gang's
    /// kernels for it with NVRTC (once per architecture in a process) and loads them.
    ///
    /// # Errors
    /// [`Error::LibraryMissing`] without the driver or NVRTC, [`Error::NoDevice`] when the
    /// ordinal is not a visible device, [`Error::Compile`] or [`Error::Driver`] otherwise.
    pub fn open(ordinal: usize) -> Result<CudaDevice> {
        driver_available()?;
        let count = CudaContext::device_count().map_err(|e| Error::driver("counting the CUDA devices", e))?;
        if ordinal >= count.max(0) as usize {
            let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "(unset)".into());
            return Err(Error::NoDevice(format!(
                "CUDA device {ordinal} was asked for but the driver shows {count} (CUDA_VISIBLE_DEVICES={visible})"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::driver(format!("opening cuda:{ordinal}"), e))?;
        // One stream for everything: no cross-stream events are needed.
        // SAFETY: no buffer of this context exists yet, and all work goes to one stream.
        unsafe { ctx.disable_event_tracking() };
        let compute =
            ctx.compute_capability().map_err(|e| Error::driver(format!("reading cuda:{ordinal}'s architecture"), e))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown".into());
        let uuid = ctx.uuid().map(|u| format_uuid(&u.bytes.map(|b| b as u8))).unwrap_or_default();
        let image = module_cubin(compute.0, compute.1)?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(image))
            .map_err(|e| Error::driver(format!("loading gang's kernels on cuda:{ordinal}"), e))?;
        let functions = KERNELS
            .iter()
            .map(|k| {
                module
                    .load_function(k)
                    .map(|f| (*k, f))
                    .map_err(|e| Error::driver(format!("finding kernel {k} in the compiled module"), e))
            })
            .collect::<Result<Vec<_>>>()?;
        let stream = ctx.default_stream();
        Ok(CudaDevice { ctx, stream, _module: module, functions, name, uuid, compute })
    }

    /// The device's name (`NVIDIA H200`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's UUID (`GPU-...`).
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute
    }

    /// The ordinal among the visible devices.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(|e| Error::driver("reading the device's free memory", e))
    }

    /// Makes this device's context current on the calling thread (before NCCL calls).
    pub fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| Error::driver(format!("binding cuda:{} to the thread", self.ordinal()), e))
    }

    /// The stream every operation of this device runs on (for NCCL).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The raw device address of element `off` of a buffer (for NCCL).
    pub fn address<T>(&self, buf: &CudaSlice<T>, off: usize) -> u64 {
        let (ptr, _sync) = buf.device_ptr(&self.stream);
        ptr + (off * std::mem::size_of::<T>()) as u64
    }

    fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f)
            .ok_or_else(|| Error::InvalidArgument(format!("no kernel {name} in gang's module")))
    }
}

/// gang's kernels compiled for compute capability `major.minor` (one NVRTC compilation per
/// architecture in a process).
fn module_cubin(major: i32, minor: i32) -> Result<Vec<u8>> {
    Ok(crate::nvrtc::module_image(major, minor)?.image.clone())
}

fn wrong_device() -> Error {
    Error::InvalidArgument("a buffer of another device was passed to a kernel".into())
}

impl Device {
    /// A short description: `host kernels` or `cuda:0 NVIDIA H200 (sm_90, GPU-...)`.
    pub fn describe(&self) -> String {
        match self {
            Device::Host => "host build of the CUDA kernels".into(),
            Device::Cuda(d) => {
                format!("cuda:{} {} (sm_{}{}, {})", d.ordinal(), d.name, d.compute.0, d.compute.1, d.uuid)
            }
        }
    }

    /// Whether this is a CUDA device.
    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// A zeroed buffer of `len` elements.
    pub fn zeros<T: Elem>(&self, len: usize) -> Result<Buf<T>> {
        match self {
            Device::Host => Ok(Buf::Host(vec![T::default(); len])),
            Device::Cuda(d) => d.stream.alloc_zeros::<T>(len.max(1)).map(Buf::Cuda).map_err(|e| {
                Error::driver(
                    format!("allocating {} MiB on cuda:{}", (len * std::mem::size_of::<T>()) >> 20, d.ordinal()),
                    e,
                )
            }),
        }
    }

    /// A buffer holding a copy of `src`.
    pub fn upload<T: Elem>(&self, src: &[T]) -> Result<Buf<T>> {
        let mut b = self.zeros(src.len())?;
        self.write(&mut b, 0, src)?;
        Ok(b)
    }

    /// Copies `src` into `dst` from element `off`.
    pub fn write<T: Elem>(&self, dst: &mut Buf<T>, off: usize, src: &[T]) -> Result<()> {
        if off + src.len() > dst.len() {
            return Err(Error::InvalidArgument(format!(
                "writing {} elements at offset {off} into a buffer of {}",
                src.len(),
                dst.len()
            )));
        }
        match (self, dst) {
            (Device::Host, Buf::Host(v)) => {
                v[off..off + src.len()].copy_from_slice(src);
                Ok(())
            }
            (Device::Cuda(d), Buf::Cuda(s)) => {
                if src.is_empty() {
                    return Ok(());
                }
                let mut view = s.slice_mut(off..off + src.len());
                d.stream.memcpy_htod(src, &mut view).map_err(|e| Error::driver("copying to the device", e))
            }
            _ => Err(wrong_device()),
        }
    }

    /// Copies elements `off..off + dst.len()` of `src` into `dst` (waits for the work
    /// before it).
    pub fn read<T: Elem>(&self, src: &Buf<T>, off: usize, dst: &mut [T]) -> Result<()> {
        if off + dst.len() > src.len() {
            return Err(Error::InvalidArgument(format!(
                "reading {} elements at offset {off} from a buffer of {}",
                dst.len(),
                src.len()
            )));
        }
        match (self, src) {
            (Device::Host, Buf::Host(v)) => {
                dst.copy_from_slice(&v[off..off + dst.len()]);
                Ok(())
            }
            (Device::Cuda(d), Buf::Cuda(s)) => {
                if dst.is_empty() {
                    return Ok(());
                }
                let view = s.slice(off..off + dst.len());
                d.stream.memcpy_dtoh(&view, dst).map_err(|e| Error::driver("copying from the device", e))?;
                d.stream.synchronize().map_err(|e| Error::driver("waiting for a copy from the device", e))
            }
            _ => Err(wrong_device()),
        }
    }

    /// A copy of the whole buffer on the host.
    pub fn to_vec<T: Elem>(&self, src: &Buf<T>) -> Result<Vec<T>> {
        let mut v = vec![T::default(); src.len()];
        self.read(src, 0, &mut v)?;
        Ok(v)
    }

    /// Copies all of `src` to the start of `dst` (on the device: a device-to-device copy).
    pub fn copy<T: Elem>(&self, src: &Buf<T>, dst: &mut Buf<T>) -> Result<()> {
        if dst.len() < src.len() {
            return Err(Error::InvalidArgument(format!("copying {} elements into {}", src.len(), dst.len())));
        }
        match (self, src, dst) {
            (Device::Host, Buf::Host(a), Buf::Host(b)) => {
                b[..a.len()].copy_from_slice(a);
                Ok(())
            }
            (Device::Cuda(d), Buf::Cuda(a), Buf::Cuda(b)) => {
                let mut view = b.slice_mut(0..a.len());
                d.stream.memcpy_dtod(a, &mut view).map_err(|e| Error::driver("copying on the device", e))
            }
            _ => Err(wrong_device()),
        }
    }

    /// Sets every element to zero.
    pub fn zero<T: Elem>(&self, buf: &mut Buf<T>) -> Result<()> {
        match (self, buf) {
            (Device::Host, Buf::Host(v)) => {
                v.fill(T::default());
                Ok(())
            }
            (Device::Cuda(d), Buf::Cuda(s)) => {
                d.stream.memset_zeros(s).map_err(|e| Error::driver("zeroing a buffer", e))
            }
            _ => Err(wrong_device()),
        }
    }

    /// Waits for all work queued on the device.
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Host => Ok(()),
            Device::Cuda(d) => d.stream.synchronize().map_err(|e| Error::driver("waiting for the device", e)),
        }
    }

    /// Runs a kernel (queued on a CUDA device; at once on the host).
    pub fn launch(&self, l: Launch<'_>) -> Result<()> {
        l.check()?;
        if l.threads == 0 {
            return Ok(());
        }
        match self {
            Device::Host => crate::host::run(l),
            Device::Cuda(d) => launch_cuda(d, l),
        }
    }
}

/// One kernel argument as the driver takes it.
enum Raw {
    Ptr(u64),
    Int(i32),
    Float(f32),
}

fn launch_cuda(d: &CudaDevice, l: Launch<'_>) -> Result<()> {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    let mut raw = Vec::with_capacity(l.args.len());
    for a in &l.args {
        raw.push(match a {
            Arg::F32(v, _) => Raw::Ptr(cuda_address(d, v.buf, v.off)?),
            Arg::F32Mut(v, _) => Raw::Ptr(cuda_address(d, v.buf, v.off)?),
            Arg::F64(v, _) => Raw::Ptr(cuda_address(d, v.buf, v.off)?),
            Arg::F64Mut(v, _) => Raw::Ptr(cuda_address(d, v.buf, v.off)?),
            Arg::I64(v, _) => Raw::Ptr(cuda_address(d, v.buf, v.off)?),
            Arg::Int(i) => Raw::Int(*i),
            Arg::Float(f) => Raw::Float(*f),
        });
    }
    let func = d.function(l.name)?;
    let blocks = u32::try_from(l.threads.div_ceil(BLOCK_THREADS as usize)).map_err(|_| {
        Error::InvalidArgument(format!("{}: {} threads are too many for one launch", l.name, l.threads))
    })?;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK_THREADS, 1, 1), shared_mem_bytes: 0 };
    let mut b = d.stream.launch_builder(func);
    for r in &raw {
        match r {
            Raw::Ptr(p) => b.arg(p),
            Raw::Int(i) => b.arg(i),
            Raw::Float(f) => b.arg(f),
        };
    }
    // SAFETY: the arguments follow the kernel's C signature (the constructors of `Launch`
    // list them in its order, with its types: pointers as 64-bit device addresses, `int`,
    // `float`), and `check` verified that every buffer holds the elements the kernel
    // touches for these sizes; the buffers outlive the queued work because every read
    // back synchronizes the stream before a buffer can be dropped by its owner.
    unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| Error::driver(format!("launching {}", l.name), e))
}

fn cuda_address<T>(d: &CudaDevice, b: &Buf<T>, off: usize) -> Result<u64> {
    match b {
        Buf::Cuda(s) => Ok(d.address(s, off)),
        Buf::Host(_) => Err(wrong_device()),
    }
}

/// Raw host pointers of a launch's arguments, for the host executor.
pub(crate) enum HostArg {
    Ptr(*const u8),
    PtrMut(*mut u8),
    Int(i32),
    Float(f32),
}

impl Launch<'_> {
    /// The arguments as raw host pointers (after `check`); rows of gathers are checked
    /// against their source here, since the host build would read out of bounds.
    pub(crate) fn host_args(&mut self) -> Result<Vec<HostArg>> {
        // The gathers: every row index must lie inside the source.
        if matches!(self.name, "gang_gather_rows" | "gang_gather_values") {
            // The source's length, and the floats per row (`f` of gather_rows, else 1).
            let (src_len, f) = match (&self.args[0], &self.args[3]) {
                (Arg::F32(_, need), Arg::Int(f)) => (*need, (*f).max(1) as usize),
                (Arg::F32(_, need), _) => (*need, 1),
                _ => unreachable!("built by the constructors"),
            };
            if let Arg::I64(rows, n) = &self.args[1] {
                if let Buf::Host(v) = rows.buf {
                    let src_rows = src_len / f;
                    if let Some(bad) = v[rows.off..rows.off + n].iter().find(|&&r| r < 0 || r as usize >= src_rows) {
                        return Err(Error::InvalidArgument(format!(
                            "{}: row {bad} is outside the source's {src_rows} rows",
                            self.name
                        )));
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(self.args.len());
        for a in &mut self.args {
            out.push(match a {
                Arg::F32(v, _) => HostArg::Ptr(host_ptr(v.buf, v.off)?),
                Arg::F64(v, _) => HostArg::Ptr(host_ptr(v.buf, v.off)?),
                Arg::I64(v, _) => HostArg::Ptr(host_ptr(v.buf, v.off)?),
                Arg::F32Mut(v, _) => HostArg::PtrMut(host_ptr_mut(v.buf, v.off)?),
                Arg::F64Mut(v, _) => HostArg::PtrMut(host_ptr_mut(v.buf, v.off)?),
                Arg::Int(i) => HostArg::Int(*i),
                Arg::Float(f) => HostArg::Float(*f),
            });
        }
        Ok(out)
    }
}

fn host_ptr<T>(b: &Buf<T>, off: usize) -> Result<*const u8> {
    match b {
        Buf::Host(v) => Ok(v[off..].as_ptr().cast()),
        Buf::Cuda(_) => Err(wrong_device()),
    }
}

fn host_ptr_mut<T>(b: &mut Buf<T>, off: usize) -> Result<*mut u8> {
    match b {
        Buf::Host(v) => Ok(v[off..].as_mut_ptr().cast()),
        Buf::Cuda(_) => Err(wrong_device()),
    }
}
