//! The host build of the CUDA kernels: the same `gpu/kernels/*.cu` sources compiled as
//! C++ by this crate's build script, run one thread index after another.
//!
//! Because every kernel is a function of its thread index alone (no shared memory, no
//! atomics), running the indices in turn computes exactly what the GPU computes, up to the
//! rounding of the math library (`expf`, `log1pf`) and of fused multiply-adds. It is the
//! CPU twin of each kernel: [`crate::train`] runs over it in the tests, and the GPU check
//! compares the device with it.
#![allow(unsafe_code)]

use crate::error::{Error, Result};
use crate::exec::{HostArg, Launch};

type P = *const u8;
type M = *mut u8;

// The kernels as the host build exports them (their C signatures with typed pointers
// passed as untyped ones: the same ABI on x86-64 and aarch64).
unsafe extern "C" {
    fn gang_host_set_thread(i: i64);
    fn gang_gather_rows(src: P, rows: P, n: i32, f: i32, dst: M);
    fn gang_gather_values(src: P, rows: P, n: i32, dst: M);
    fn gang_dense_forward(x: P, w: P, b: P, n: i32, inp: i32, out: i32, relu: i32, z: M);
    fn gang_dense_grad_partial(d: P, x: P, n: i32, inp: i32, out: i32, seg: i32, partial: M);
    fn gang_sum_segments(partial: P, segments: i32, len: i32, out: M);
    fn gang_dense_backward_input(d: P, w: P, a: P, n: i32, inp: i32, out: i32, dprev: M);
    fn gang_head_regression(z: P, t: P, n: i32, d: M, loss: M, correct: M);
    fn gang_head_binary(z: P, t: P, n: i32, d: M, loss: M, correct: M);
    fn gang_head_softmax(z: P, t: P, n: i32, k: i32, d: M, loss: M, correct: M);
    fn gang_sigmoid(z: M, n: i32);
    fn gang_softmax_rows(z: M, n: i32, k: i32);
    fn gang_sum_rows_f64(v: P, n: i32, seg: i32, partial: M);
    fn gang_accumulate_f64(partial: P, count: i32, acc: M);
    fn gang_sgd(p: M, g: P, len: i32, lr: f32, wd: f32, scale: f32);
    fn gang_sgd_momentum(p: M, b: M, g: P, len: i32, lr: f32, momentum: f32, wd: f32, scale: f32);
    #[allow(clippy::too_many_arguments)]
    fn gang_adam(
        p: M,
        m: M,
        v: M,
        g: P,
        len: i32,
        step_size: f32,
        inv_sqrt_bc2: f32,
        shrink: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        scale: f32,
    );
}

fn p(a: &HostArg) -> P {
    match a {
        HostArg::Ptr(p) => *p,
        HostArg::PtrMut(p) => p.cast_const(),
        _ => unreachable!("the constructors of Launch place pointers here"),
    }
}
fn m(a: &HostArg) -> M {
    match a {
        HostArg::PtrMut(p) => *p,
        _ => unreachable!("the constructors of Launch place outputs here"),
    }
}
fn i(a: &HostArg) -> i32 {
    match a {
        HostArg::Int(i) => *i,
        _ => unreachable!("the constructors of Launch place ints here"),
    }
}
fn f(a: &HostArg) -> f32 {
    match a {
        HostArg::Float(f) => *f,
        _ => unreachable!("the constructors of Launch place floats here"),
    }
}

/// Runs a checked launch on the host, thread index by thread index.
#[allow(clippy::undocumented_unsafe_blocks)] // one SAFETY comment for every arm, below
pub(crate) fn run(mut l: Launch<'_>) -> Result<()> {
    let a = l.host_args()?;
    let call: Box<dyn Fn()> = match l.name {
        // SAFETY (for every arm): the arguments were built by `Launch`'s constructors in the
        // kernel's order and types, and `Launch::check` (plus the row check of the gathers in
        // `host_args`) verified that every pointer is valid for the elements the kernel
        // touches; the buffers are borrowed by `l` for the whole call.
        "gang_gather_rows" => {
            Box::new(|| unsafe { gang_gather_rows(p(&a[0]), p(&a[1]), i(&a[2]), i(&a[3]), m(&a[4])) })
        }
        "gang_gather_values" => Box::new(|| unsafe { gang_gather_values(p(&a[0]), p(&a[1]), i(&a[2]), m(&a[3])) }),
        "gang_dense_forward" => Box::new(|| unsafe {
            gang_dense_forward(p(&a[0]), p(&a[1]), p(&a[2]), i(&a[3]), i(&a[4]), i(&a[5]), i(&a[6]), m(&a[7]))
        }),
        "gang_dense_grad_partial" => Box::new(|| unsafe {
            gang_dense_grad_partial(p(&a[0]), p(&a[1]), i(&a[2]), i(&a[3]), i(&a[4]), i(&a[5]), m(&a[6]))
        }),
        "gang_sum_segments" => Box::new(|| unsafe { gang_sum_segments(p(&a[0]), i(&a[1]), i(&a[2]), m(&a[3])) }),
        "gang_dense_backward_input" => Box::new(|| unsafe {
            gang_dense_backward_input(p(&a[0]), p(&a[1]), p(&a[2]), i(&a[3]), i(&a[4]), i(&a[5]), m(&a[6]))
        }),
        "gang_head_regression" => {
            Box::new(|| unsafe { gang_head_regression(p(&a[0]), p(&a[1]), i(&a[2]), m(&a[3]), m(&a[4]), m(&a[5])) })
        }
        "gang_head_binary" => {
            Box::new(|| unsafe { gang_head_binary(p(&a[0]), p(&a[1]), i(&a[2]), m(&a[3]), m(&a[4]), m(&a[5])) })
        }
        "gang_head_softmax" => Box::new(|| unsafe {
            gang_head_softmax(p(&a[0]), p(&a[1]), i(&a[2]), i(&a[3]), m(&a[4]), m(&a[5]), m(&a[6]))
        }),
        "gang_sigmoid" => Box::new(|| unsafe { gang_sigmoid(m(&a[0]), i(&a[1])) }),
        "gang_softmax_rows" => Box::new(|| unsafe { gang_softmax_rows(m(&a[0]), i(&a[1]), i(&a[2])) }),
        "gang_sum_rows_f64" => Box::new(|| unsafe { gang_sum_rows_f64(p(&a[0]), i(&a[1]), i(&a[2]), m(&a[3])) }),
        "gang_accumulate_f64" => Box::new(|| unsafe { gang_accumulate_f64(p(&a[0]), i(&a[1]), m(&a[2])) }),
        "gang_sgd" => Box::new(|| unsafe { gang_sgd(m(&a[0]), p(&a[1]), i(&a[2]), f(&a[3]), f(&a[4]), f(&a[5])) }),
        "gang_sgd_momentum" => Box::new(|| unsafe {
            gang_sgd_momentum(m(&a[0]), m(&a[1]), p(&a[2]), i(&a[3]), f(&a[4]), f(&a[5]), f(&a[6]), f(&a[7]))
        }),
        "gang_adam" => Box::new(|| unsafe {
            gang_adam(
                m(&a[0]),
                m(&a[1]),
                m(&a[2]),
                p(&a[3]),
                i(&a[4]),
                f(&a[5]),
                f(&a[6]),
                f(&a[7]),
                f(&a[8]),
                f(&a[9]),
                f(&a[10]),
                f(&a[11]),
            )
        }),
        other => return Err(Error::InvalidArgument(format!("the host build has no kernel {other}"))),
    };
    for t in 0..l.threads as i64 {
        // SAFETY: sets a thread-local of the host runner; no other effect.
        unsafe { gang_host_set_thread(t) };
        call();
    }
    Ok(())
}
