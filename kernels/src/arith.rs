//! The two instruction sets the kernels are built for, the choice between them, and the
//! elementary functions the losses need, written so that they vectorise.
//!
//! Every kernel is generic over [`Arith`]: [`Plain`] multiplies and adds with two
//! roundings and runs on any x86-64 (baseline SSE2) or other CPU; [`Fused`] uses fused
//! multiply-add and is compiled for AVX2 + FMA, chosen at run time when the CPU has them.
//! Both are deterministic (a fixed evaluation order); they give slightly different bits
//! from each other. [`Kernels::active`] says which one this process uses: the best the CPU
//! supports, or what `GANG_KERNELS` asks for (`portable` gives the same bits on every
//! CPU, like MKL's `MKL_CBWR`).
//!
//! `exp` and `log1p` are polynomial (Cephes' single-precision coefficients, about 1 ulp),
//! not the C library's, so that the loss of a block of rows vectorises and its bits do
//! not depend on which `libm` variant the machine's C library picks.
#![allow(unsafe_code)]

use std::fmt;
use std::sync::OnceLock;

/// Multiply-add as a kernel does it.
pub(crate) trait Arith: Copy + Send + Sync + 'static {
    /// Whether the wider register tiles pay (16 vector registers of 8 lanes).
    const WIDE: bool;
    /// `a * b + c`.
    fn madd(a: f32, b: f32, c: f32) -> f32;

    /// [`dense::dot`](crate::dense::dot) with this arithmetic; builds may override it
    /// with the same bits, faster.
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        crate::dense::dot_lanes::<Self>(a, b)
    }

    /// `[dot(x[r], w) for r in 0..8]` for eight rows `x` `[8, f]` (`f = w.len()`): the
    /// bits of eight [`dot`](Arith::dot) calls; builds may compute the rows side by side.
    #[inline(always)]
    fn dot_rows8(x: &[f32], w: &[f32]) -> [f32; 8] {
        let f = w.len();
        std::array::from_fn(|r| Self::dot(&x[r * f..(r + 1) * f], w))
    }
}

/// `a * b + c` with two roundings: any CPU.
#[derive(Clone, Copy)]
pub(crate) struct Plain;

impl Arith for Plain {
    const WIDE: bool = false;
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `a * b + c` with one rounding (FMA): only called in code compiled for AVX2 + FMA.
#[derive(Clone, Copy)]
pub(crate) struct Fused;

impl Arith for Fused {
    const WIDE: bool = true;
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }

    /// The bits of `dot_lanes::<Fused>` (eight FMA lanes, then halves, quarters, the
    /// last pair): LLVM vectorises that loop two lanes at a time, this is one AVX
    /// register.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = a.len().min(b.len());
        let (ca, ta) = a[..n].as_chunks::<8>();
        let (cb, tb) = b[..n].as_chunks::<8>();
        // SAFETY: `Fused` code runs only inside `run_avx2_fma` (see `dispatch`), on a CPU
        // with AVX2 and FMA; the loads read 8 floats from `[f32; 8]` arrays.
        let mut s = unsafe {
            let mut acc = _mm256_setzero_ps();
            for (x, y) in ca.iter().zip(cb) {
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr()), _mm256_loadu_ps(y.as_ptr()), acc);
            }
            let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
            let q = _mm_add_ps(h, _mm_movehl_ps(h, h));
            _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)))
        };
        for (x, y) in ta.iter().zip(tb) {
            s = x.mul_add(*y, s);
        }
        s
    }

    /// Eight rows side by side: eight independent accumulators (no FMA waits on the one
    /// before), `w` loaded once per 8 features, then the eight reductions at once by
    /// transposition, adding in the order [`dot`](Arith::dot) adds.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn dot_rows8(x: &[f32], w: &[f32]) -> [f32; 8] {
        use std::arch::x86_64::*;
        let f = w.len();
        assert!(x.len() >= 8 * f, "eight rows of {f} features");
        let full = f - f % 8;
        let mut out = [0f32; 8];
        // SAFETY: `Fused` code runs only inside `run_avx2_fma` (see `dispatch`), on a CPU
        // with AVX2 and FMA. Row r's loads read x[r * f + k..r * f + k + 8] with
        // k + 8 <= full <= f and r < 8, inside `x` (asserted above); w[k..k + 8] likewise.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut k = 0;
            while k < full {
                let wk = _mm256_loadu_ps(w.as_ptr().add(k));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(r * f + k)), wk, *a);
                }
                k += 8;
            }
            // h_r = low half + high half of acc_r, rows r and r + 4 in one register.
            let halves = |a: __m256, b: __m256| {
                _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b))
            };
            let (h04, h15, h26, h37) =
                (halves(acc[0], acc[4]), halves(acc[1], acc[5]), halves(acc[2], acc[6]), halves(acc[3], acc[7]));
            // [h0_0 + h0_2, h1_0 + h1_2, h0_1 + h0_3, h1_1 + h1_3 | rows 4 and 5], then rows 2, 3 | 6, 7.
            let u = _mm256_add_ps(_mm256_unpacklo_ps(h04, h15), _mm256_unpackhi_ps(h04, h15));
            let v = _mm256_add_ps(_mm256_unpacklo_ps(h26, h37), _mm256_unpackhi_ps(h26, h37));
            // (h_0 + h_2) + (h_1 + h_3) for rows 0..8, in order.
            let sums =
                _mm256_add_ps(_mm256_shuffle_ps::<0b01_00_01_00>(u, v), _mm256_shuffle_ps::<0b11_10_11_10>(u, v));
            _mm256_storeu_ps(out.as_mut_ptr(), sums);
        }
        for (r, o) in out.iter_mut().enumerate() {
            for (xv, wv) in x[r * f + full..(r + 1) * f].iter().zip(&w[full..]) {
                *o = xv.mul_add(*wv, *o);
            }
        }
        out
    }
}

/// Which build of the kernels a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// Baseline instructions, multiply and add never fused: the same bits on every CPU.
    Portable,
    /// AVX2 and FMA (x86-64 CPUs since 2013-2015): about twice the FLOP rate.
    Avx2Fma,
}

impl fmt::Display for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kernels::Portable => "portable",
            Kernels::Avx2Fma => "avx2-fma",
        })
    }
}

static ACTIVE: OnceLock<Kernels> = OnceLock::new();

impl Kernels {
    /// The fastest build this CPU runs.
    pub fn detect() -> Kernels {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Kernels::Avx2Fma;
        }
        Kernels::Portable
    }

    /// The build this process uses, fixed at the first call: `GANG_KERNELS=portable`,
    /// `avx2-fma` (if the CPU has it) or `auto` (the default: [`detect`](Self::detect)).
    /// An unknown value or a build the CPU lacks falls back to `auto`, with a warning on
    /// stderr.
    pub fn active() -> Kernels {
        *ACTIVE.get_or_init(|| {
            let best = Kernels::detect();
            match std::env::var("GANG_KERNELS").as_deref() {
                Err(_) | Ok("") | Ok("auto") => best,
                Ok("portable") => Kernels::Portable,
                Ok("avx2-fma") if best == Kernels::Avx2Fma => best,
                Ok(other) => {
                    eprintln!(
                        "gang: GANG_KERNELS={other:?} is not available here (portable, avx2-fma if the CPU has AVX2 \
                         and FMA, or auto); using {best}"
                    );
                    best
                }
            }
        })
    }

    /// Fixes the build for this process before the first kernel call (later calls are
    /// refused and return the build in use).
    ///
    /// # Errors
    /// The build already in use, if it is a different one, or if the CPU lacks `k`.
    pub fn set(k: Kernels) -> Result<(), Kernels> {
        if k == Kernels::Avx2Fma && Kernels::detect() != Kernels::Avx2Fma {
            return Err(Kernels::active());
        }
        let now = *ACTIVE.get_or_init(|| k);
        if now == k {
            Ok(())
        } else {
            Err(now)
        }
    }
}

/// A piece of kernel work, run with the [`Arith`] of the active build.
pub(crate) trait Kernel {
    type Output;
    /// The work. Implementations are `#[inline(always)]`, and so is everything they call,
    /// so that it is compiled into the AVX2 entry point below.
    fn run<A: Arith>(self) -> Self::Output;
}

/// Runs `k` with the build of [`Kernels::active`].
#[inline]
pub(crate) fn dispatch<K: Kernel>(k: K) -> K::Output {
    match Kernels::active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active` returns `Avx2Fma` only when `detect` found AVX2 and FMA on
        // this CPU, the features `run_avx2_fma` is compiled with.
        Kernels::Avx2Fma => unsafe { run_avx2_fma(k) },
        _ => k.run::<Plain>(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2_fma<K: Kernel>(k: K) -> K::Output {
    k.run::<Fused>()
}

/// `1.5 * 2^23`: adding it rounds an `f32` below `2^22` to an integer (nearest, ties even).
const ROUND: f32 = 12_582_912.0;

/// `e^x` for `x <= 0` (what the losses need), branch-free; below `-87.3` it returns
/// `e^-87.3` (1.2e-38) instead of a subnormal or zero.
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' coefficients as published
pub(crate) fn exp_neg<A: Arith>(x: f32) -> f32 {
    let x = x.clamp(-87.3, 0.0);
    let t = A::madd(x, std::f32::consts::LOG2_E, ROUND);
    let n = t - ROUND;
    let k = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = A::madd(n, -0.693_359_4, x);
    let r = A::madd(n, 2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4;
    p = A::madd(p, r, 1.398_199_9e-3);
    p = A::madd(p, r, 8.333_452e-3);
    p = A::madd(p, r, 4.166_579_6e-2);
    p = A::madd(p, r, 1.666_666_5e-1);
    p = A::madd(p, r, 5.000_000_1e-1);
    let y = A::madd(p, r * r, r) + 1.0;
    y * f32::from_bits((k + 127).wrapping_shl(23) as u32)
}

/// `ln(u)` for `u` in `[1, 2^24)` (sums of exponentials), branch-free.
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' coefficients as published
pub(crate) fn ln_ge1<A: Arith>(u: f32) -> f32 {
    let bits = u.to_bits();
    // u = 2^e * m with m in [sqrt(1/2), sqrt(2)).
    let shifted = bits.wrapping_add(0x3f80_0000 - 0x3f35_04f3);
    let e = (shifted >> 23) as i32 - 127;
    let m = f32::from_bits((shifted & 0x007f_ffff) + 0x3f35_04f3);
    let f = m - 1.0;
    let z = f * f;
    let mut p = 7.037_683_6e-2;
    p = A::madd(p, f, -1.151_461e-1);
    p = A::madd(p, f, 1.167_699_9e-1);
    p = A::madd(p, f, -1.242_014_1e-1);
    p = A::madd(p, f, 1.424_932_3e-1);
    p = A::madd(p, f, -1.666_805_8e-1);
    p = A::madd(p, f, 2.000_071_4e-1);
    p = A::madd(p, f, -2.499_999_4e-1);
    p = A::madd(p, f, 3.333_333_1e-1);
    let y = A::madd(-0.5, z, f * z * p);
    let ef = e as f32;
    A::madd(ef, std::f32::consts::LN_2, f + y)
}

/// `ln(1 + e)` for `e` in `[0, 1]`, branch-free and accurate for small `e`.
#[inline(always)]
pub(crate) fn ln_1p_unit<A: Arith>(e: f32) -> f32 {
    let u = 1.0 + e;
    // `u` is rounded; add back what the rounding lost (first order).
    let lost = e - (u - 1.0);
    ln_ge1::<A>(u) + lost / u
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<A: Arith>() {
        let mut worst_exp = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp_neg::<A>(x));
            worst_exp = worst_exp.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp}");
        let mut worst_ln = 0f64;
        for i in 0..200_000 {
            let e = i as f32 / 200_000.0;
            let want = f64::from(e).ln_1p();
            let got = f64::from(ln_1p_unit::<A>(e));
            let err = if want == 0.0 { got.abs() } else { ((got - want) / want).abs() };
            worst_ln = worst_ln.max(err);
        }
        for e in [1e-30f32, 1e-12, 3e-8, 1e-7, 1e-4, 0.5, 1.0] {
            let want = f64::from(e).ln_1p();
            let got = f64::from(ln_1p_unit::<A>(e));
            worst_ln = worst_ln.max(((got - want) / want).abs());
        }
        assert!(worst_ln < 3e-7, "log1p relative error {worst_ln}");
        for u in [1.0f32, 1.5, 2.0, 3.0, 10.0, 1e6] {
            let want = f64::from(u).ln();
            assert!((f64::from(ln_ge1::<A>(u)) - want).abs() <= 3e-7 * want.max(1.0), "ln {u}");
        }
        assert_eq!(exp_neg::<A>(0.0), 1.0);
        assert!(exp_neg::<A>(-1000.0) < 2e-38);
    }

    #[test]
    fn elementary_functions_are_accurate_portable() {
        check::<Plain>();
    }

    #[test]
    fn elementary_functions_are_accurate_fused() {
        // `mul_add` is exact without FMA hardware too (slowly, through libm).
        check::<Fused>();
    }

    #[test]
    fn the_avx_dot_gives_the_bits_of_the_lanes() {
        if Kernels::detect() != Kernels::Avx2Fma {
            return;
        }
        struct Job<'a>(&'a [f32], &'a [f32]);
        impl Kernel for Job<'_> {
            type Output = (f32, f32);
            fn run<A: Arith>(self) -> (f32, f32) {
                (A::dot(self.0, self.1), crate::dense::dot_lanes::<A>(self.0, self.1))
            }
        }
        for n in [0usize, 1, 7, 8, 9, 31, 32, 33, 64, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let (fast, lanes) = unsafe { run_avx2_fma(Job(&a, &b)) };
            assert_eq!(fast.to_bits(), lanes.to_bits(), "n={n}");
        }
    }

    #[test]
    fn eight_rows_side_by_side_give_the_bits_of_eight_dots() {
        if Kernels::detect() != Kernels::Avx2Fma {
            return;
        }
        struct Job<'a>(&'a [f32], &'a [f32]);
        impl Kernel for Job<'_> {
            type Output = ([f32; 8], [f32; 8]);
            fn run<A: Arith>(self) -> ([f32; 8], [f32; 8]) {
                let f = self.1.len();
                (A::dot_rows8(self.0, self.1), std::array::from_fn(|r| A::dot(&self.0[r * f..(r + 1) * f], self.1)))
            }
        }
        for f in [1usize, 5, 8, 13, 16, 32, 33, 70] {
            let x: Vec<f32> = (0..8 * f).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
            let w: Vec<f32> = (0..f).map(|i| (i as f32 * 0.11).cos()).collect();
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let (side_by_side, one_by_one) = unsafe { run_avx2_fma(Job(&x, &w)) };
            assert_eq!(side_by_side.map(f32::to_bits), one_by_one.map(f32::to_bits), "f={f}");
        }
    }
}
