//! Inner loops on plain `f32` slices, generic over [`Arith`] (how multiply and add are
//! done: see [`crate::arith`]).
//!
//! Every loop here has a fixed evaluation order that depends only on slice lengths, so
//! the same inputs give bitwise-identical outputs whatever thread runs them: each output
//! element is summed in one fixed order (`j` order for a matrix product, row order for a
//! gradient), whatever register tile computes it. The loops are written over fixed-width
//! lanes and const-generic tiles so that LLVM vectorises them without `unsafe`
//! intrinsics; every function is `#[inline(always)]` so that it is compiled into the
//! AVX2 + FMA entry point when that is the active build.

use crate::arith::Arith;

/// Lanes of the dot-product accumulator (two SSE or one AVX register).
const LANES: usize = 8;

/// `sum_i a[i] * b[i]` over `min(a.len(), b.len())` elements, in a fixed order: eight
/// interleaved partial sums, combined as halves then quarters then pairs, then the tail.
#[inline(always)]
pub(crate) fn dot<A: Arith>(a: &[f32], b: &[f32]) -> f32 {
    A::dot(a, b)
}

/// [`dot`] as plain code on lanes (what every build's `dot` computes).
#[inline(always)]
pub(crate) fn dot_lanes<A: Arith>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ca, ta) = a[..n].as_chunks::<LANES>();
    let (cb, tb) = b[..n].as_chunks::<LANES>();
    let mut acc = [0f32; LANES];
    for (x, y) in ca.iter().zip(cb) {
        acc = std::array::from_fn(|k| A::madd(x[k], y[k], acc[k]));
    }
    // Halves, quarters, then the last pair: the order a vector unit reduces in.
    let h: [f32; 4] = std::array::from_fn(|k| acc[k] + acc[k + 4]);
    let mut s = (h[0] + h[2]) + (h[1] + h[3]);
    for (x, y) in ta.iter().zip(tb) {
        s = A::madd(*x, *y, s);
    }
    s
}

/// `y[i] += x[i]`.
#[inline(always)]
pub(crate) fn add_assign(y: &mut [f32], x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += xi;
    }
}

/// `sums[c] += sum_r m[r, c]` for `m` `[rows, cols]`: the bias gradient of a dense
/// layer. Each column is summed in row order, in registers, 32 columns at a time.
#[inline(always)]
pub(crate) fn add_column_sums(m: &[f32], rows: usize, cols: usize, sums: &mut [f32]) {
    let mut c0 = 0;
    while c0 + 2 * TILE <= cols {
        column_sums_tile::<{ 2 * TILE }>(m, rows, cols, c0, sums);
        c0 += 2 * TILE;
    }
    while c0 + 4 <= cols {
        column_sums_tile::<4>(m, rows, cols, c0, sums);
        c0 += 4;
    }
    while c0 < cols {
        column_sums_tile::<1>(m, rows, cols, c0, sums);
        c0 += 1;
    }
}

#[inline(always)]
fn column_sums_tile<const T: usize>(m: &[f32], rows: usize, cols: usize, c0: usize, sums: &mut [f32]) {
    let mut acc: [f32; T] = sums[c0..c0 + T].try_into().expect("tile width");
    for row in m[..rows * cols].chunks_exact(cols) {
        let row: &[f32; T] = row[c0..c0 + T].try_into().expect("tile width");
        for t in 0..T {
            acc[t] += row[t];
        }
    }
    sums[c0..c0 + T].copy_from_slice(&acc);
}

/// Transpose the row-major `[rows, cols]` matrix `a` into a new `[cols, rows]` one.
pub(crate) fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

/// The weights of one dense layer `z = W x + b`, as the kernels read them.
pub(crate) struct DenseWeights<'a> {
    /// Input width.
    pub inp: usize,
    /// Output width.
    pub out: usize,
    /// `W`, row-major `[out, inp]` (PyTorch's `nn.Linear.weight`).
    pub w: &'a [f32],
    /// `W^T`, row-major `[inp, out]`, when the layer is wide enough for the
    /// tiled form of the forward pass (see [`uses_transpose`]).
    pub wt: Option<&'a [f32]>,
    /// `b`, `[out]`.
    pub b: &'a [f32],
}

/// Whether the forward pass of a layer with `out` outputs uses the transposed weights.
///
/// With `out >= 8`, `z_r = b + sum_i x_ri W^T[i, :]` runs through [`rows_times_matrix`]
/// with register tiles over the outputs; narrower layers (the heads) use one dot
/// product per output instead. The choice depends only on the shape, so it never
/// changes a result between runs.
pub(crate) fn uses_transpose(out: usize) -> bool {
    out >= 8
}

/// Width of the register tiles of [`rows_times_matrix`] and [`accumulate_outer`]
/// (four SSE or two AVX registers per row of the tile).
const TILE: usize = 16;

/// `out[r, :] = init + sum_j a[r, j] * m[j, :]` for `a` `[rows, k]`, `m` `[k, n]`,
/// `out` `[rows, n]` (`init` is `[n]`, or zero).
///
/// Each output element is summed in `j` order; the tiling does not change any sum.
/// (Zero `a[r, j]` are not skipped: after a ReLU they fall at random and the branch
/// would cost more in mispredictions than it saves.) Tiles: 4 rows x 16 columns with
/// the wide build (8 AVX accumulators, enough to hide the FMA latency), 2 x 16 with the
/// portable one (8 SSE accumulators).
#[inline(always)]
pub(crate) fn rows_times_matrix<A: Arith>(
    a: &[f32],
    rows: usize,
    k: usize,
    m: &[f32],
    n: usize,
    init: Option<&[f32]>,
    out: &mut [f32],
) {
    let mut r0 = 0;
    if A::WIDE {
        r0 = rows - rows % 4;
        rmm_columns::<A, 4>(a, 0..r0, k, m, n, init, out);
    }
    let pairs = r0 + (rows - r0) / 2 * 2;
    rmm_columns::<A, 2>(a, r0..pairs, k, m, n, init, out);
    rmm_columns::<A, 1>(a, pairs..rows, k, m, n, init, out);
}

/// The column tiles of [`rows_times_matrix`] for `rows` (a multiple of `R` rows).
#[inline(always)]
fn rmm_columns<A: Arith, const R: usize>(
    a: &[f32],
    rows: std::ops::Range<usize>,
    k: usize,
    m: &[f32],
    n: usize,
    init: Option<&[f32]>,
    out: &mut [f32],
) {
    if rows.is_empty() {
        return;
    }
    let mut c0 = 0;
    while c0 + TILE <= n {
        rmm_tile::<A, R, TILE>(a, rows.clone(), k, m, n, c0, init, out);
        c0 += TILE;
    }
    if c0 + TILE / 2 <= n {
        rmm_tile::<A, R, { TILE / 2 }>(a, rows.clone(), k, m, n, c0, init, out);
        c0 += TILE / 2;
    }
    while c0 + 4 <= n {
        rmm_tile::<A, R, 4>(a, rows.clone(), k, m, n, c0, init, out);
        c0 += 4;
    }
    while c0 < n {
        rmm_tile::<A, R, 1>(a, rows.clone(), k, m, n, c0, init, out);
        c0 += 1;
    }
}

/// Columns `c0..c0 + T` of [`rows_times_matrix`], `R` rows at a time (each load of `m`
/// feeds `R` rows' accumulators).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rmm_tile<A: Arith, const R: usize, const T: usize>(
    a: &[f32],
    rows: std::ops::Range<usize>,
    k: usize,
    m: &[f32],
    n: usize,
    c0: usize,
    init: Option<&[f32]>,
    out: &mut [f32],
) {
    let mut start = [0f32; T];
    if let Some(init) = init {
        start.copy_from_slice(&init[c0..c0 + T]);
    }
    let mut r = rows.start;
    while r + R <= rows.end {
        let mut acc = [start; R];
        let ar: [&[f32]; R] = std::array::from_fn(|q| &a[(r + q) * k..(r + q + 1) * k]);
        for (j, mj) in m.chunks_exact(n).take(k).enumerate() {
            let mj: &[f32; T] = mj[c0..c0 + T].try_into().expect("tile width");
            for q in 0..R {
                let xq = ar[q][j];
                for t in 0..T {
                    acc[q][t] = A::madd(xq, mj[t], acc[q][t]);
                }
            }
        }
        for (q, acc) in acc.iter().enumerate() {
            out[(r + q) * n + c0..(r + q) * n + c0 + T].copy_from_slice(acc);
        }
        r += R;
    }
}

/// `g[o, i] += sum_r d[r, o] * x[r, i]` for `d` `[rows, no]`, `x` `[rows, ni]`,
/// `g` `[no, ni]`: the weight gradient `delta^T x` of a dense layer.
///
/// Each element is summed in row order; the tiling does not change any sum. Tiles: 4
/// gradient rows x 16 columns with the wide build, 2 x 16 with the portable one.
#[inline(always)]
pub(crate) fn accumulate_outer<A: Arith>(d: &[f32], x: &[f32], rows: usize, no: usize, ni: usize, g: &mut [f32]) {
    let mut o0 = 0;
    if A::WIDE {
        o0 = no - no % 4;
        outer_columns::<A, 4>(d, x, rows, no, ni, 0..o0, g);
    }
    let pairs = o0 + (no - o0) / 2 * 2;
    outer_columns::<A, 2>(d, x, rows, no, ni, o0..pairs, g);
    outer_columns::<A, 1>(d, x, rows, no, ni, pairs..no, g);
}

/// The column tiles of [`accumulate_outer`] for gradient rows `os` (a multiple of `O`).
#[inline(always)]
fn outer_columns<A: Arith, const O: usize>(
    d: &[f32],
    x: &[f32],
    rows: usize,
    no: usize,
    ni: usize,
    os: std::ops::Range<usize>,
    g: &mut [f32],
) {
    let mut o = os.start;
    while o + O <= os.end {
        let mut i0 = 0;
        // A single gradient row (linear models): 32 columns at a time, four AVX
        // accumulators in flight.
        while O == 1 && A::WIDE && i0 + 2 * TILE <= ni {
            outer_tile::<A, O, { 2 * TILE }>(d, x, rows, no, ni, o, i0, g);
            i0 += 2 * TILE;
        }
        while i0 + TILE <= ni {
            outer_tile::<A, O, TILE>(d, x, rows, no, ni, o, i0, g);
            i0 += TILE;
        }
        if i0 + TILE / 2 <= ni {
            outer_tile::<A, O, { TILE / 2 }>(d, x, rows, no, ni, o, i0, g);
            i0 += TILE / 2;
        }
        while i0 + 4 <= ni {
            outer_tile::<A, O, 4>(d, x, rows, no, ni, o, i0, g);
            i0 += 4;
        }
        while i0 < ni {
            outer_tile::<A, O, 1>(d, x, rows, no, ni, o, i0, g);
            i0 += 1;
        }
        o += O;
    }
}

/// Columns `i0..i0 + T` of gradient rows `o..o + O` of [`accumulate_outer`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn outer_tile<A: Arith, const O: usize, const T: usize>(
    d: &[f32],
    x: &[f32],
    rows: usize,
    no: usize,
    ni: usize,
    o: usize,
    i0: usize,
    g: &mut [f32],
) {
    let at = |q: usize| (o + q) * ni + i0..(o + q) * ni + i0 + T;
    let mut acc: [[f32; T]; O] = std::array::from_fn(|q| g[at(q)].try_into().expect("tile width"));
    for (xr, dr) in x[..rows * ni].chunks_exact(ni).zip(d[..rows * no].chunks_exact(no)) {
        let xr: &[f32; T] = xr[i0..i0 + T].try_into().expect("tile width");
        let dr: &[f32; O] = dr[o..o + O].try_into().expect("tile height");
        for q in 0..O {
            for t in 0..T {
                acc[q][t] = A::madd(dr[q], xr[t], acc[q][t]);
            }
        }
    }
    for (q, acc) in acc.iter().enumerate() {
        g[at(q)].copy_from_slice(acc);
    }
}

/// `z[r, :] = W x[r, :] + b` for the `rows` rows of `x` (`[rows, inp]`) into `z`
/// (`[rows, out]`).
#[inline(always)]
pub(crate) fn forward<A: Arith>(layer: &DenseWeights<'_>, x: &[f32], rows: usize, z: &mut [f32]) {
    let (ni, no) = (layer.inp, layer.out);
    match layer.wt {
        Some(wt) => rows_times_matrix::<A>(x, rows, ni, wt, no, Some(layer.b), z),
        None => {
            // Narrow layers: one dot product per row and output, eight rows side by side.
            let eights = rows - rows % 8;
            for r in (0..eights).step_by(8) {
                let x8 = &x[r * ni..(r + 8) * ni];
                for o in 0..no {
                    let d = A::dot_rows8(x8, &layer.w[o * ni..(o + 1) * ni]);
                    for (q, dq) in d.into_iter().enumerate() {
                        z[(r + q) * no + o] = layer.b[o] + dq;
                    }
                }
            }
            for r in eights..rows {
                let xr = &x[r * ni..(r + 1) * ni];
                for (o, zo) in z[r * no..(r + 1) * no].iter_mut().enumerate() {
                    *zo = layer.b[o] + dot::<A>(xr, &layer.w[o * ni..(o + 1) * ni]);
                }
            }
        }
    }
}

/// Backward pass of one dense layer over `rows` rows.
///
/// Adds `delta^T x` to `gw` (`[out, inp]`) and the column sums of `delta` to `gb`
/// (`[out]`); when `dx` is given, writes `delta W` into it (`[rows, inp]`).
#[inline(always)]
pub(crate) fn backward<A: Arith>(
    layer: &DenseWeights<'_>,
    x: &[f32],
    rows: usize,
    delta: &[f32],
    gw: &mut [f32],
    gb: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    let (ni, no) = (layer.inp, layer.out);
    accumulate_outer::<A>(delta, x, rows, no, ni, gw);
    add_column_sums(delta, rows, no, gb);
    if let Some(dx) = dx {
        rows_times_matrix::<A>(delta, rows, no, layer.w, ni, None, dx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arith::{Fused, Plain};

    fn dot_matches_naive<A: Arith>() {
        for n in [0usize, 1, 7, 8, 9, 31, 32, 33, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot::<A>(&a, &b) as f64 - naive).abs() < 1e-4, "n={n}");
        }
    }

    /// Shapes that exercise every tile: widths 16 + 8 + 4 + 1 + 1 = 30, rows and
    /// gradient rows 4 + 2 + 1 = 7.
    fn tiled_kernels_match_naive<A: Arith>() {
        let (rows, k, n) = (7, 5, 30);
        let a: Vec<f32> = (0..rows * k).map(|i| if i % 4 == 0 { 0.0 } else { (i as f32).sin() }).collect();
        let m: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.3).cos()).collect();
        let init: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut out = vec![0f32; rows * n];
        rows_times_matrix::<A>(&a, rows, k, &m, n, Some(&init), &mut out);
        for r in 0..rows {
            for c in 0..n {
                let e: f32 = init[c] + (0..k).map(|j| a[r * k + j] * m[j * n + c]).sum::<f32>();
                assert!((out[r * n + c] - e).abs() < 1e-5);
            }
        }
        // g += a^T m over the rows (a: [k, rows] read as d, m: [k, n] read as x).
        let mut g = vec![1f32; rows * n];
        accumulate_outer::<A>(&a, &m, k, rows, n, &mut g);
        for o in 0..rows {
            for i in 0..n {
                let e: f32 = 1.0 + (0..k).map(|r| a[r * rows + o] * m[r * n + i]).sum::<f32>();
                assert!((g[o * n + i] - e).abs() < 1e-5);
            }
        }
    }

    fn forward_both_forms_agree<A: Arith>() {
        let (ni, no, rows) = (5, 9, 7);
        let w: Vec<f32> = (0..ni * no).map(|i| (i as f32 * 0.3).sin()).collect();
        let b: Vec<f32> = (0..no).map(|i| i as f32 * 0.1).collect();
        let x: Vec<f32> = (0..rows * ni).map(|i| (i as f32 * 0.7).cos()).collect();
        let wt = transpose(&w, no, ni);
        let mut z1 = vec![0f32; rows * no];
        let mut z2 = vec![0f32; rows * no];
        let l1 = DenseWeights { inp: ni, out: no, w: &w, wt: None, b: &b };
        let l2 = DenseWeights { inp: ni, out: no, w: &w, wt: Some(&wt), b: &b };
        forward::<A>(&l1, &x, rows, &mut z1);
        forward::<A>(&l2, &x, rows, &mut z2);
        for (a, b) in z1.iter().zip(&z2) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    /// A row's result does not depend on which tile computed it: the rows of a matrix
    /// product, computed all together and one at a time, are bitwise equal.
    fn tiles_do_not_change_bits<A: Arith>() {
        let (rows, k, n) = (11, 32, 64);
        let a: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.77).sin()).collect();
        let m: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.13).cos()).collect();
        let mut all = vec![0f32; rows * n];
        rows_times_matrix::<A>(&a, rows, k, &m, n, None, &mut all);
        for r in 0..rows {
            let mut one = vec![0f32; n];
            rows_times_matrix::<A>(&a[r * k..(r + 1) * k], 1, k, &m, n, None, &mut one);
            assert_eq!(one, all[r * n..(r + 1) * n]);
        }
        let mut g_all = vec![0f32; n * k];
        accumulate_outer::<A>(&m[..rows * n.min(k)], &a, rows, n.min(k), k, &mut g_all[..n.min(k) * k]);
        let mut g_rows = vec![0f32; n * k];
        for r in 0..rows {
            let d = &m[r * n.min(k)..(r + 1) * n.min(k)];
            accumulate_outer::<A>(d, &a[r * k..(r + 1) * k], 1, n.min(k), k, &mut g_rows[..n.min(k) * k]);
        }
        assert_eq!(g_all, g_rows);
    }

    #[test]
    fn portable_kernels() {
        dot_matches_naive::<Plain>();
        tiled_kernels_match_naive::<Plain>();
        forward_both_forms_agree::<Plain>();
        tiles_do_not_change_bits::<Plain>();
    }

    #[test]
    fn fused_kernels() {
        // `mul_add` without FMA hardware is exact too (through libm): the same checks
        // hold whatever the test machine.
        dot_matches_naive::<Fused>();
        tiled_kernels_match_naive::<Fused>();
        forward_both_forms_agree::<Fused>();
        tiles_do_not_change_bits::<Fused>();
    }
}
