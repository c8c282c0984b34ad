//! Bitwise determinism: across rayon thread counts, across ways of splitting a batch
//! into calls, and of initialisation.

mod common;

use gang_kernels::{BatchStats, Model, ModelKind, Output, Targets, CHUNK_ROWS};

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
}

fn grad_in(threads: usize, model: &Model, x: &[f32], y: Targets<'_>) -> (Vec<f32>, BatchStats) {
    pool(threads).install(|| {
        let mut g = model.grad_buffer();
        let s = model.loss_and_grad(x, y, &mut g).unwrap();
        (g, s)
    })
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// Several chunks and waves (`threads * 4` chunks per wave) with a short last chunk.
const N: usize = 13 * CHUNK_ROWS + 77;

fn cases() -> Vec<(Model, Vec<f32>, Vec<i64>)> {
    let f = 32;
    let x = common::features(N, f, 1);
    let mut out = Vec::new();
    for (i, (kind, classes)) in [
        (ModelKind::Logistic, 2),
        (ModelKind::Linear, 5),
        (ModelKind::Softmax { classes: 5 }, 5),
        (ModelKind::Mlp { hidden: vec![16, 8], outputs: Output::Softmax { classes: 3 } }, 3),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = Model::new(kind, f, 7).unwrap();
        common::randomize(&mut m, 0.3, 11 + i as u64);
        out.push((m, x.clone(), common::labels(N, classes, 3 + i as u64)));
    }
    out
}

#[test]
fn gradient_is_bitwise_identical_across_thread_counts() {
    for (model, x, y) in cases() {
        let y = Targets::Class(&y);
        let (g1, s1) = grad_in(1, &model, &x, y);
        let (g3, s3) = grad_in(3, &model, &x, y);
        let (g2, s2) = grad_in(2, &model, &x, y);
        assert_eq!(bits(&g1), bits(&g3), "{}: 1 vs 3 threads", model.kind());
        assert_eq!(bits(&g1), bits(&g2), "{}: 1 vs 2 threads", model.kind());
        assert_eq!(s1.loss_sum.to_bits(), s3.loss_sum.to_bits());
        assert_eq!((s1.correct, s1.n), (s3.correct, s3.n));
        assert_eq!(s1, s2);
        // Evaluation and prediction too.
        let e1 = pool(1).install(|| model.loss(&x, y).unwrap());
        let e3 = pool(3).install(|| model.loss(&x, y).unwrap());
        assert_eq!(e1.loss_sum.to_bits(), e3.loss_sum.to_bits());
        let p1 = pool(1).install(|| model.predict(&x).unwrap());
        let p3 = pool(3).install(|| model.predict(&x).unwrap());
        assert_eq!(bits(&p1), bits(&p3));
    }
}

#[test]
fn chunk_aligned_calls_add_up_to_one_call() {
    // `loss_and_grad` adds each chunk's gradient in order, so feeding the same rows in
    // chunk-aligned pieces into one buffer gives the same bits as one call.
    for (model, x, y) in cases() {
        let f = model.features();
        let (whole, s_whole) = grad_in(3, &model, &x, Targets::Class(&y));
        let mut pieces = model.grad_buffer();
        let mut s_pieces = BatchStats::default();
        let cuts = [0, CHUNK_ROWS, 4 * CHUNK_ROWS, 9 * CHUNK_ROWS, N];
        for w in cuts.windows(2) {
            let s = model.loss_and_grad(&x[w[0] * f..w[1] * f], Targets::Class(&y[w[0]..w[1]]), &mut pieces).unwrap();
            s_pieces.merge(&s);
        }
        assert_eq!(bits(&whole), bits(&pieces), "{}", model.kind());
        // The f64 loss sums of the calls add in another association than the chunks of
        // one call: equal to rounding, not bit for bit.
        assert_eq!((s_whole.correct, s_whole.n), (s_pieces.correct, s_pieces.n));
        assert!((s_whole.loss_sum - s_pieces.loss_sum).abs() <= 1e-12 * s_whole.loss_sum.abs());
    }
}

#[test]
fn initialisation_depends_only_on_the_seed() {
    let kind = ModelKind::Mlp { hidden: vec![64, 32], outputs: Output::Binary };
    let a = Model::new(kind.clone(), 32, 5).unwrap();
    let b = Model::new(kind.clone(), 32, 5).unwrap();
    let c = Model::new(kind, 32, 6).unwrap();
    assert_eq!(bits(a.params()), bits(b.params()));
    assert_ne!(bits(a.params()), bits(c.params()));
    // He-uniform bound of the first layer; biases zero.
    let t = a.tensors();
    let bound = (6.0f32 / 32.0).sqrt();
    assert!(a.params()[t[0].range()].iter().all(|w| w.abs() <= bound));
    assert!(a.params()[t[1].range()].iter().all(|&b| b == 0.0));
    // Linear models start at zero.
    let l = Model::new(ModelKind::Softmax { classes: 3 }, 4, 5).unwrap();
    assert!(l.params().iter().all(|&p| p == 0.0));
}

#[test]
fn the_build_in_use_is_the_one_asked_for() {
    use gang_kernels::Kernels;
    let asked = std::env::var("GANG_KERNELS").unwrap_or_default();
    let expected = if asked == "portable" { Kernels::Portable } else { Kernels::detect() };
    assert_eq!(Kernels::active(), expected, "GANG_KERNELS={asked:?}");
    // Fixed for the life of the process.
    let other = if expected == Kernels::Portable { Kernels::detect() } else { Kernels::Portable };
    if other != expected {
        assert_eq!(Kernels::set(other), Err(expected));
    }
    assert_eq!(Kernels::set(expected), Ok(()));
}
