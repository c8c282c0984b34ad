//! The Local backend: every collective at N = 1..4, with and without splitting into
//! chunks, and the failure semantics (no hang when a rank fails or strays).

use gang::internal::selftest::selftest;
use gang::{execute, Config, Error, RankBuffers, ReduceOp};

#[test]
fn every_collective_is_right_at_every_gang_size() {
    for n in 1..=4 {
        let reports = execute(Config::local(n), |ctx| selftest(ctx.comm())).unwrap();
        assert_eq!(reports.len(), n);
        assert!(reports.iter().all(|r| r.checks == reports[0].checks && r.checks > 40));
    }
}

#[test]
fn every_collective_is_right_when_split_into_small_chunks() {
    for n in 1..=4 {
        for max in [1, 3, 7, 64] {
            let reports = execute(Config::local(n).with_max_count(max), |ctx| selftest(ctx.comm()))
                .unwrap_or_else(|e| panic!("n={n} max={max}: {e}"));
            assert!(reports.iter().all(|r| r.max_count == max));
        }
    }
}

#[test]
fn results_are_identical_on_every_rank_and_in_rank_order() {
    let out = execute(Config::local(4), |ctx| {
        let comm = ctx.comm();
        let gathered = comm.allgather_bytes(format!("r{}", ctx.rank()).as_bytes())?;
        let mut v = [ctx.rank() as f64 * 0.1; 3];
        comm.allreduce(&mut v, ReduceOp::Sum)?;
        Ok((gathered.into_vecs(), v))
    })
    .unwrap();
    for (g, v) in &out {
        assert_eq!(g, &vec![b"r0".to_vec(), b"r1".to_vec(), b"r2".to_vec(), b"r3".to_vec()]);
        // Rank-order reduction: bitwise the same everywhere.
        assert_eq!(v.map(f64::to_bits), out[0].1.map(f64::to_bits));
    }
}

#[test]
fn a_rank_that_returns_an_error_fails_the_gang_instead_of_hanging_it() {
    let err = execute(Config::local(3), |ctx| {
        if ctx.rank() == 1 {
            return Err(Error::External("bad partition".into()));
        }
        // Peers wait for rank 1, which never comes.
        ctx.comm().barrier()?;
        Ok(())
    })
    .unwrap_err();
    assert!(err.to_string().contains("bad partition"), "{err}");
}

#[test]
fn a_rank_that_panics_fails_the_gang_and_names_the_rank() {
    let err = execute(Config::local(4), |ctx| {
        ctx.comm().barrier()?;
        if ctx.rank() == 2 {
            panic!("boom on two");
        }
        ctx.comm().allreduce_scalar(1u64, ReduceOp::Sum)?;
        Ok(())
    })
    .unwrap_err();
    match err {
        Error::GangFailed { rank, message, .. } => {
            assert_eq!(rank, 2);
            assert!(message.contains("boom on two"), "{message}");
        }
        other => panic!("expected GangFailed, got {other}"),
    }
}

#[test]
fn ranks_calling_different_collectives_get_an_error_not_a_hang() {
    let err = execute(Config::local(2), |ctx| {
        if ctx.rank() == 0 {
            ctx.comm().barrier()
        } else {
            ctx.comm().allreduce_scalar(1.0f64, ReduceOp::Sum).map(|_| ())
        }
    })
    .unwrap_err();
    assert!(matches!(err, Error::CollectiveMismatch { .. } | Error::GangFailed { .. }), "{err}");
    assert!(err.to_string().contains("barrier") || err.to_string().contains("allreduce"), "{err}");
}

#[test]
fn arguments_that_cannot_work_are_refused_before_communicating() {
    let out = execute(Config::local(2), |ctx| {
        let c = ctx.comm();
        let e1 = c.allreduce(&mut [true], ReduceOp::Sum).unwrap_err();
        let e2 = c.all_to_all_bytes(&RankBuffers::from_parts(&[b"x"])).unwrap_err();
        let e3 = c.broadcast(5, &mut [0u8; 1]).unwrap_err();
        let e4 = c.allreduce_into(&[1.0f32], &mut [0.0; 2], ReduceOp::Max).unwrap_err();
        // The gang is still usable afterwards.
        c.barrier()?;
        Ok([e1, e2, e3, e4].map(|e| matches!(e, Error::InvalidArgument(_))))
    })
    .unwrap();
    assert!(out.iter().all(|r| r.iter().all(|&b| b)));
}

#[test]
fn config_from_args_takes_local_and_leaves_the_rest() {
    let (c, rest) = Config::from_args(["--local", "3", "job", "--x=1"].map(String::from)).unwrap();
    assert_eq!(c.backend, gang::BackendChoice::Local(3));
    assert_eq!(rest, vec!["job", "--x=1"]);
    let (c, _) = Config::from_args(["--local=2".to_string()]).unwrap();
    assert_eq!(c.backend, gang::BackendChoice::Local(2));
    assert!(Config::from_args(["--local", "0"].map(String::from)).is_err());
    assert!(Config::from_args(["--local".to_string()]).is_err());
}

#[test]
fn context_describes_the_local_gang() {
    let out = execute(Config::local(2), |ctx| {
        Ok((ctx.rank(), ctx.world(), ctx.local_rank(), ctx.local_size(), ctx.device().to_string(), ctx.attempt()))
    })
    .unwrap();
    assert_eq!(out[1].0, 1);
    assert_eq!(out[1].1, 2);
    assert_eq!(out[1].2, 1);
    assert_eq!(out[1].3, 2);
    assert_eq!(out[1].5, 0);
}
