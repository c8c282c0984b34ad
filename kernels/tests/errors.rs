//! Bad inputs are errors, never panics, and leave the output buffers unchanged.

use gang_kernels::{Error, Model, ModelKind, Optimizer, OptimizerState, Output, Targets};

#[test]
fn shapes() {
    let m = Model::new(ModelKind::Logistic, 3, 0).unwrap();
    let mut g = vec![7.0f32; m.num_params()];
    let x = [0.0f32; 6];
    let e = m.loss_and_grad(&x[..5], Targets::Class(&[0, 1]), &mut g).unwrap_err();
    assert_eq!(e, Error::Ragged { what: "x", len: 5, width: 3 });
    let e = m.loss_and_grad(&x, Targets::Class(&[0, 1, 1]), &mut g).unwrap_err();
    assert_eq!(e, Error::Shape { what: "y", expected: 2, actual: 3 });
    let e = m.loss_and_grad(&x, Targets::Class(&[0, 1]), &mut g[..3]).unwrap_err();
    assert_eq!(e, Error::Shape { what: "grad", expected: 4, actual: 3 });
    assert!(g.iter().all(|&v| v == 7.0), "grad untouched on error");
    assert!(matches!(m.predict(&x[..4]), Err(Error::Ragged { .. })));
    assert!(matches!(m.loss(&x, Targets::Class(&[1])), Err(Error::Shape { what: "y", .. })));
    // An empty batch is fine.
    let s = m.loss_and_grad(&[], Targets::Class(&[]), &mut g).unwrap();
    assert_eq!((s.n, s.loss_sum, s.mean_loss(), s.accuracy()), (0, 0.0, 0.0, 0.0));
    assert!(m.predict(&[]).unwrap().is_empty());
}

#[test]
fn labels_and_targets() {
    let x = [0.0f32; 6];
    let logistic = Model::new(ModelKind::Logistic, 2, 0).unwrap();
    let mut g = logistic.grad_buffer();
    g[0] = 3.0;
    let e = logistic.loss_and_grad(&x, Targets::Class(&[0, 1, 2]), &mut g).unwrap_err();
    assert_eq!(e, Error::Label { row: 2, label: 2, classes: 2 });
    assert_eq!(g[0], 3.0);
    let e = logistic.loss(&x, Targets::Value(&[0.0, 1.5, 0.5])).unwrap_err();
    assert!(matches!(e, Error::Target { row: 1, .. }), "{e:?}");
    assert!(logistic.loss(&x, Targets::Value(&[0.0, f32::NAN, 0.5])).is_err());

    let softmax = Model::new(ModelKind::Softmax { classes: 3 }, 2, 0).unwrap();
    let e = softmax.loss(&x, Targets::Class(&[0, -1, 2])).unwrap_err();
    assert_eq!(e, Error::Label { row: 1, label: -1, classes: 3 });
    let e = softmax.loss(&x, Targets::Value(&[0.0, 1.0, 2.0])).unwrap_err();
    assert_eq!(e, Error::TargetKind { head: "softmax", targets: "value" });
    assert!(!e.to_string().is_empty());

    let linear = Model::new(ModelKind::Linear, 2, 0).unwrap();
    let e = linear.loss(&x, Targets::Value(&[0.0, 1.0, f32::INFINITY])).unwrap_err();
    assert!(matches!(e, Error::Target { row: 2, .. }));
    assert_eq!(linear.predict_class(&x).unwrap_err(), Error::NotClassifier);
}

#[test]
fn invalid_models() {
    let bad = |kind: ModelKind, f: usize| {
        let e = Model::new(kind, f, 0).unwrap_err();
        assert!(matches!(e, Error::InvalidModel { .. }), "{e:?}");
        assert!(e.to_string().starts_with("invalid model"));
    };
    bad(ModelKind::Logistic, 0);
    bad(ModelKind::Softmax { classes: 1 }, 3);
    bad(ModelKind::Mlp { hidden: vec![], outputs: Output::Binary }, 3);
    bad(ModelKind::Mlp { hidden: vec![4, 0], outputs: Output::Binary }, 3);
    bad(ModelKind::Mlp { hidden: vec![4], outputs: Output::Softmax { classes: 0 } }, 3);
    bad(ModelKind::Mlp { hidden: vec![usize::MAX / 2], outputs: Output::Binary }, 3);
    let e = Model::from_params(ModelKind::Logistic, 3, vec![0.0; 3]).unwrap_err();
    assert_eq!(e, Error::Shape { what: "params", expected: 4, actual: 3 });
    let m = Model::from_params(ModelKind::Logistic, 3, vec![1.0; 4]).unwrap();
    assert_eq!(m.params(), [1.0; 4]);
}

#[test]
fn invalid_optimizers_and_state() {
    for opt in [
        Optimizer::sgd(-0.1),
        Optimizer::sgd(f32::NAN),
        Optimizer::Sgd { lr: 0.1, momentum: 1.0, weight_decay: 0.0 },
        Optimizer::Sgd { lr: 0.1, momentum: 0.0, weight_decay: -1.0 },
        Optimizer::Adam { lr: 0.1, beta1: 1.0, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
        Optimizer::Adam { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 0.0, weight_decay: 0.0 },
    ] {
        assert!(matches!(OptimizerState::new(opt, 3), Err(Error::InvalidOptimizer { .. })), "{opt:?}");
    }
    let mut s = OptimizerState::new(Optimizer::adam(0.1), 3).unwrap();
    let mut p = [1.0f32; 3];
    let e = s.step(&mut p, &[1.0; 2]).unwrap_err();
    assert_eq!(e, Error::Shape { what: "grad", expected: 3, actual: 2 });
    assert!(s.step(&mut p[..2], &[1.0; 3]).is_err());
    assert_eq!((s.steps(), p), (0, [1.0; 3]), "nothing changed on error");

    let adam = Optimizer::adam(0.1);
    let z = [0.0f32; 3];
    let missing = OptimizerState::from_state(adam, 3, 1, &[("exp_avg", &z)]).unwrap_err();
    assert!(matches!(missing, Error::InvalidState { .. }));
    let short = OptimizerState::from_state(adam, 3, 1, &[("exp_avg", &z), ("exp_avg_sq", &z[..2])]);
    assert!(matches!(short, Err(Error::InvalidState { .. })));
    let extra = OptimizerState::from_state(Optimizer::sgd(0.1), 3, 1, &[("exp_avg", &z)]);
    assert!(matches!(extra, Err(Error::InvalidState { .. })));
    assert!(OptimizerState::from_state(Optimizer::sgd(0.1), 3, 1, &[]).is_ok());
}
