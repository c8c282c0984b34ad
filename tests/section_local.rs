//! Barrier sections on the Local backend: entry checks, task infos, all_gather, steps,
//! checkpoints from inside a section, and what an error or a panic inside one does.

mod common;

use common::Scratch;
use gang::checkpoint::{CheckpointStore, State, Tensor};
use gang::{execute, Config, Error, ReduceOp};
use std::sync::Mutex;

#[test]
fn every_rank_sees_the_same_members_and_gathers_in_rank_order() {
    let out = execute(Config::local(4), |ctx| {
        let first = ctx.barrier_section("setup", |gang| {
            assert_eq!((gang.name(), gang.index(), gang.step()), ("setup", 0, 0));
            let infos = gang.task_infos();
            assert_eq!(infos.iter().map(|i| i.rank).collect::<Vec<_>>(), [0, 1, 2, 3]);
            assert!(infos.iter().all(|i| i.host == ctx.host() && !i.host.is_empty()));
            let got = gang.all_gather(format!("rank{}", gang.rank()).as_bytes())?;
            assert_eq!(got, (0..4).map(|r| format!("rank{r}").into_bytes()).collect::<Vec<_>>());
            gang.set_step(9);
            assert_eq!(gang.step(), 9);
            gang.comm().allreduce_scalar(1u64, ReduceOp::Sum)
        })?;
        // A second section counts on.
        let index = ctx.barrier_section("train", |gang| Ok(gang.index()))?;
        Ok((first, index))
    })
    .unwrap();
    assert_eq!(out, vec![(4, 1); 4]);
}

#[test]
fn different_section_names_are_an_error_on_every_rank_not_a_hang() {
    let errors = Mutex::new(Vec::new());
    let _ = execute(Config::local(3), |ctx| {
        let name = if ctx.rank() == 2 { "eval" } else { "train" };
        let e = ctx.barrier_section(name, |_| Ok(())).unwrap_err();
        assert!(matches!(&e, Error::SectionMismatch { entered, .. } if entered.len() == 3), "{e}");
        errors.lock().unwrap().push(e.to_string());
        Ok(())
    });
    let errors = errors.into_inner().unwrap();
    assert_eq!(errors.len(), 3);
    for e in &errors {
        assert!(
            e.contains("ranks 0,1 entered \"train\" as section #0")
                && e.contains("rank 2 entered \"eval\" as section #0"),
            "{e}"
        );
    }
}

#[test]
fn the_same_name_at_a_different_count_is_an_error_naming_the_counts() {
    let errors = Mutex::new(Vec::new());
    let _ = execute(Config::local(2), |ctx| {
        // Rank 1 enters a section where rank 0 calls a plain allgather: rank 1 learns that
        // its peer is not in a section, and the counts part ways.
        if ctx.rank() == 0 {
            ctx.comm().allgather_bytes(b"not a section")?;
        } else {
            let e = ctx.barrier_section("warmup", |_| Ok(())).unwrap_err();
            assert!(e.to_string().contains("another collective"), "{e}");
        }
        let e = ctx.barrier_section("train", |_| Ok(())).unwrap_err();
        errors.lock().unwrap().push(e.to_string());
        Ok(())
    });
    for e in errors.into_inner().unwrap() {
        assert!(
            e.contains("rank 0 entered \"train\" as section #0")
                && e.contains("rank 1 entered \"train\" as section #1"),
            "{e}"
        );
    }
}

#[test]
fn an_error_inside_a_section_stops_every_rank_and_names_the_section_and_step() {
    let seen = Mutex::new(Vec::new());
    let err = execute(Config::local(3), |ctx| {
        let r = ctx.barrier_section("train", |gang| {
            for step in 0..100u64 {
                gang.set_step(step);
                if gang.rank() == 1 && step == 7 {
                    return Err(Error::from("the loss is NaN"));
                }
                gang.comm().barrier()?;
            }
            Ok(())
        });
        seen.lock().unwrap().push((ctx.rank(), r.as_ref().map_err(ToString::to_string).err()));
        r
    })
    .unwrap_err();
    // The root cause, not a peer that saw the abort.
    assert_eq!(err.to_string(), "the loss is NaN");
    let mut seen = seen.into_inner().unwrap();
    seen.sort();
    for (rank, e) in seen {
        let e = e.expect("every rank fails");
        if rank != 1 {
            assert!(e.contains("rank 1 failed in section train step 7: the loss is NaN"), "rank {rank}: {e}");
        }
    }
}

#[test]
fn a_panic_inside_a_section_becomes_a_gang_failure_naming_it() {
    let err = execute(Config::local(3), |ctx| {
        ctx.barrier_section("train", |gang| {
            gang.set_step(3);
            if gang.rank() == 2 {
                panic!("index out of bounds in rank 2");
            }
            gang.comm().barrier()
        })
    })
    .unwrap_err();
    match err {
        Error::GangFailed { rank, stage, message } => {
            assert_eq!((rank, stage.as_str()), (2, "section train step 3"));
            assert!(message.contains("panicked: index out of bounds in rank 2"), "{message}");
        }
        other => panic!("expected GangFailed, got {other}"),
    }
}

#[test]
fn checkpoints_from_inside_a_section() {
    let s = Scratch::new("section-ckpt");
    let store = CheckpointStore::new(s.path("ckpt"), 2).unwrap().with_faults(Default::default());
    let out = execute(Config::local(2), |ctx| {
        ctx.barrier_section_with_checkpoints("train", &store, |gang| {
            assert!(gang.restore()?.is_none());
            let w = Tensor::vector("w", vec![1.0, 2.0]);
            gang.checkpoint(4, &State::new().with_replicated(w))?;
            assert_eq!(gang.step(), 4);
            Ok(())
        })?;
        ctx.barrier_section("plain", |gang| {
            let e = gang.checkpoint(5, &State::new()).unwrap_err();
            assert!(e.to_string().contains("barrier_section_with_checkpoints"), "{e}");
            Ok(())
        })?;
        let r = ctx.restore(&store)?.unwrap();
        Ok((r.step, r.tensor("w").unwrap().data.clone()))
    })
    .unwrap();
    assert_eq!(out, vec![(4, vec![1.0, 2.0]); 2]);
}
