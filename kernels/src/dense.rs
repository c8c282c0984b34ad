//! Inner loops on plain `f32` slices.
//!
//! Every loop here has a fixed evaluation order that depends only on slice lengths, so
//! the same inputs give bitwise-identical outputs whatever thread runs them. The loops
//! are written over fixed-width lanes (`chunks_exact`) so that LLVM vectorises them
//! without `unsafe` or fast-math; they never fuse multiply and add on their own, so the
//! result does not depend on the CPU's FMA support either.

/// Lanes of the dot-product accumulator (two SSE or one AVX register).
const LANES: usize = 8;

/// `sum_i a[i] * b[i]` over `min(a.len(), b.len())` elements, in a fixed order: eight
/// interleaved partial sums, combined pairwise, then the tail.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ta, tb) = (ca.remainder(), cb.remainder());
    let mut acc = [0f32; LANES];
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

/// `y[i] += alpha * x[i]` over `min(y.len(), x.len())` elements.
#[inline]
pub(crate) fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// `y[i] += x[i]`.
#[inline]
pub(crate) fn add_assign(y: &mut [f32], x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += xi;
    }
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

/// Width of the register tiles of [`rows_times_matrix`] and [`accumulate_outer`]:
/// 16 `f32` accumulators (four SSE or two AVX registers) stay in registers across the
/// inner loop.
const TILE: usize = 16;

/// `out[r, :] = init + sum_j a[r, j] * m[j, :]` for `a` `[rows, k]`, `m` `[k, n]`,
/// `out` `[rows, n]` (`init` is `[n]`, or zero).
///
/// Each output element is summed in `j` order; the tiling does not change any sum.
/// (Zero `a[r, j]` are not skipped: after a ReLU they fall at random and the branch
/// would cost more in mispredictions than it saves.)
pub(crate) fn rows_times_matrix(
    a: &[f32],
    rows: usize,
    k: usize,
    m: &[f32],
    n: usize,
    init: Option<&[f32]>,
    out: &mut [f32],
) {
    let mut c0 = 0;
    while c0 + TILE <= n {
        rows_times_matrix_tile::<TILE>(a, rows, k, m, n, c0, init, out);
        c0 += TILE;
    }
    if c0 + TILE / 2 <= n {
        rows_times_matrix_tile::<{ TILE / 2 }>(a, rows, k, m, n, c0, init, out);
        c0 += TILE / 2;
    }
    while c0 + 4 <= n {
        rows_times_matrix_tile::<4>(a, rows, k, m, n, c0, init, out);
        c0 += 4;
    }
    while c0 < n {
        rows_times_matrix_tile::<1>(a, rows, k, m, n, c0, init, out);
        c0 += 1;
    }
}

/// Columns `c0..c0 + T` of [`rows_times_matrix`], two rows at a time (each load of
/// `m` feeds two rows' accumulators).
#[allow(clippy::too_many_arguments)]
#[inline]
fn rows_times_matrix_tile<const T: usize>(
    a: &[f32],
    rows: usize,
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
    let mut r = 0;
    while r + 2 <= rows {
        let (mut acc0, mut acc1) = (start, start);
        let a0 = &a[r * k..(r + 1) * k];
        let a1 = &a[(r + 1) * k..(r + 2) * k];
        for ((&x0, &x1), mj) in a0.iter().zip(a1).zip(m.chunks_exact(n)) {
            let mj: &[f32; T] = mj[c0..c0 + T].try_into().expect("tile width");
            for t in 0..T {
                acc0[t] += x0 * mj[t];
                acc1[t] += x1 * mj[t];
            }
        }
        out[r * n + c0..r * n + c0 + T].copy_from_slice(&acc0);
        out[(r + 1) * n + c0..(r + 1) * n + c0 + T].copy_from_slice(&acc1);
        r += 2;
    }
    if r < rows {
        let mut acc = start;
        for (&x0, mj) in a[r * k..(r + 1) * k].iter().zip(m.chunks_exact(n)) {
            let mj: &[f32; T] = mj[c0..c0 + T].try_into().expect("tile width");
            for t in 0..T {
                acc[t] += x0 * mj[t];
            }
        }
        out[r * n + c0..r * n + c0 + T].copy_from_slice(&acc);
    }
}

/// `g[o, i] += sum_r d[r, o] * x[r, i]` for `d` `[rows, no]`, `x` `[rows, ni]`,
/// `g` `[no, ni]`: the weight gradient `delta^T x` of a dense layer.
///
/// Each element is summed in row order; the tiling does not change any sum.
pub(crate) fn accumulate_outer(d: &[f32], x: &[f32], rows: usize, no: usize, ni: usize, g: &mut [f32]) {
    let mut o = 0;
    while o < no {
        // Two gradient rows at a time (each load of `x` feeds both), then the odd one.
        let pair = o + 2 <= no;
        let mut i0 = 0;
        while i0 + TILE <= ni {
            accumulate_outer_tile::<TILE>(d, x, rows, no, ni, o, pair, i0, g);
            i0 += TILE;
        }
        if i0 + TILE / 2 <= ni {
            accumulate_outer_tile::<{ TILE / 2 }>(d, x, rows, no, ni, o, pair, i0, g);
            i0 += TILE / 2;
        }
        while i0 + 4 <= ni {
            accumulate_outer_tile::<4>(d, x, rows, no, ni, o, pair, i0, g);
            i0 += 4;
        }
        while i0 < ni {
            accumulate_outer_tile::<1>(d, x, rows, no, ni, o, pair, i0, g);
            i0 += 1;
        }
        o += if pair { 2 } else { 1 };
    }
}

/// Columns `i0..i0 + T` of gradient row `o` (and `o + 1` if `pair`) of
/// [`accumulate_outer`].
#[allow(clippy::too_many_arguments)]
#[inline]
fn accumulate_outer_tile<const T: usize>(
    d: &[f32],
    x: &[f32],
    rows: usize,
    no: usize,
    ni: usize,
    o: usize,
    pair: bool,
    i0: usize,
    g: &mut [f32],
) {
    let x_rows = x[..rows * ni].chunks_exact(ni);
    let d_rows = d[..rows * no].chunks_exact(no);
    let at = |o: usize| o * ni + i0..o * ni + i0 + T;
    if pair {
        let mut acc0: [f32; T] = g[at(o)].try_into().expect("tile width");
        let mut acc1: [f32; T] = g[at(o + 1)].try_into().expect("tile width");
        for (xr, dr) in x_rows.zip(d_rows) {
            let (d0, d1) = (dr[o], dr[o + 1]);
            let xr: &[f32; T] = xr[i0..i0 + T].try_into().expect("tile width");
            for t in 0..T {
                acc0[t] += d0 * xr[t];
                acc1[t] += d1 * xr[t];
            }
        }
        g[at(o)].copy_from_slice(&acc0);
        g[at(o + 1)].copy_from_slice(&acc1);
    } else {
        let mut acc: [f32; T] = g[at(o)].try_into().expect("tile width");
        for (xr, dr) in x_rows.zip(d_rows) {
            let d0 = dr[o];
            let xr: &[f32; T] = xr[i0..i0 + T].try_into().expect("tile width");
            for t in 0..T {
                acc[t] += d0 * xr[t];
            }
        }
        g[at(o)].copy_from_slice(&acc);
    }
}

/// `z[r, :] = W x[r, :] + b` for the `rows` rows of `x` (`[rows, inp]`) into `z`
/// (`[rows, out]`).
pub(crate) fn forward(layer: &DenseWeights<'_>, x: &[f32], rows: usize, z: &mut [f32]) {
    let (ni, no) = (layer.inp, layer.out);
    match layer.wt {
        Some(wt) => rows_times_matrix(x, rows, ni, wt, no, Some(layer.b), z),
        None => {
            for r in 0..rows {
                let xr = &x[r * ni..(r + 1) * ni];
                for (o, zo) in z[r * no..(r + 1) * no].iter_mut().enumerate() {
                    *zo = layer.b[o] + dot(xr, &layer.w[o * ni..(o + 1) * ni]);
                }
            }
        }
    }
}

/// Backward pass of one dense layer over `rows` rows.
///
/// Adds `delta^T x` to `gw` (`[out, inp]`) and the column sums of `delta` to `gb`
/// (`[out]`); when `dx` is given, writes `delta W` into it (`[rows, inp]`).
pub(crate) fn backward(
    layer: &DenseWeights<'_>,
    x: &[f32],
    rows: usize,
    delta: &[f32],
    gw: &mut [f32],
    gb: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    let (ni, no) = (layer.inp, layer.out);
    accumulate_outer(delta, x, rows, no, ni, gw);
    for dr in delta[..rows * no].chunks_exact(no) {
        add_assign(gb, dr);
    }
    if let Some(dx) = dx {
        rows_times_matrix(delta, rows, no, layer.w, ni, None, dx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive() {
        for n in [0usize, 1, 7, 8, 9, 31, 32, 33, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - naive).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn tiled_kernels_match_naive() {
        // Widths that exercise every tile size: 16 + 8 + 4 + 1 + 1 = 30.
        let (rows, k, n) = (3, 5, 30);
        let a: Vec<f32> = (0..rows * k).map(|i| if i % 4 == 0 { 0.0 } else { (i as f32).sin() }).collect();
        let m: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.3).cos()).collect();
        let init: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut out = vec![0f32; rows * n];
        rows_times_matrix(&a, rows, k, &m, n, Some(&init), &mut out);
        for r in 0..rows {
            for c in 0..n {
                let e: f32 = init[c] + (0..k).map(|j| a[r * k + j] * m[j * n + c]).sum::<f32>();
                assert!((out[r * n + c] - e).abs() < 1e-5);
            }
        }
        // g += a^T m over the rows (a: [k, rows] read as d, m: [k, n] read as x).
        let mut g = vec![1f32; rows * n];
        accumulate_outer(&a, &m, k, rows, n, &mut g);
        for o in 0..rows {
            for i in 0..n {
                let e: f32 = 1.0 + (0..k).map(|r| a[r * rows + o] * m[r * n + i]).sum::<f32>();
                assert!((g[o * n + i] - e).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn forward_both_forms_agree() {
        let (ni, no, rows) = (5, 9, 3);
        let w: Vec<f32> = (0..ni * no).map(|i| (i as f32 * 0.3).sin()).collect();
        let b: Vec<f32> = (0..no).map(|i| i as f32 * 0.1).collect();
        let x: Vec<f32> = (0..rows * ni).map(|i| (i as f32 * 0.7).cos()).collect();
        let wt = transpose(&w, no, ni);
        let mut z1 = vec![0f32; rows * no];
        let mut z2 = vec![0f32; rows * no];
        let l1 = DenseWeights { inp: ni, out: no, w: &w, wt: None, b: &b };
        let l2 = DenseWeights { inp: ni, out: no, w: &w, wt: Some(&wt), b: &b };
        forward(&l1, &x, rows, &mut z1);
        forward(&l2, &x, rows, &mut z2);
        for (a, b) in z1.iter().zip(&z2) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
