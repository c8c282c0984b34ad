//! `adopt_current_thread`: the calling thread becomes worker 0 of rayon's global pool and
//! the kernels give the same bits as on a pool of their own. (Its own test binary: the
//! global pool is built once per process.)

mod common;

use gang_kernels::{Model, ModelKind, Output, Targets};

#[test]
fn an_adopted_thread_is_worker_zero_and_the_gradient_keeps_its_bits() {
    let (n, f) = (10_000, 32);
    let x = common::features(n, f, 11);
    let y = common::labels(n, 2, 12);
    let mut model = Model::new(ModelKind::Mlp { hidden: vec![16], outputs: Output::Binary }, f, 3).unwrap();
    common::randomize(&mut model, 0.3, 13);
    let grad_on = |run: &dyn Fn(&mut Vec<f32>)| {
        let mut g = model.grad_buffer();
        run(&mut g);
        g
    };
    let single = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let reference = grad_on(&|g| {
        single.install(|| model.loss_and_grad(&x, Targets::Class(&y), g).unwrap());
    });

    assert_eq!(rayon::current_thread_index(), None, "the test thread starts outside any pool");
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads < 2 {
        // One thread: nothing to adopt (rayon work from other threads would find no worker).
        assert!(!gang_kernels::adopt_current_thread());
        assert_eq!(rayon::current_thread_index(), None);
        return;
    }
    assert!(gang_kernels::adopt_current_thread(), "the global pool did not exist yet");
    assert_eq!(rayon::current_thread_index(), Some(0));
    assert!(!gang_kernels::adopt_current_thread(), "a second call must change nothing");
    let adopted = grad_on(&|g| {
        model.loss_and_grad(&x, Targets::Class(&y), g).unwrap();
    });
    assert!(reference.iter().zip(&adopted).all(|(a, b)| a.to_bits() == b.to_bits()));
}
