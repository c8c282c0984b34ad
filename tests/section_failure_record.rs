//! A failure inside a barrier section is recorded in the run directory as
//! `section <name> step <s>: <error>`, with the failing rank, for the launcher to report.
//! (One test in its own binary: it sets `GANG_RUN_DIR` for the process.)

mod common;

use common::Scratch;
use gang::{execute, Config, Error};
use gang_protocol::{FailureKind, RunDir};

#[test]
fn errors_and_panics_inside_sections_are_recorded_with_section_and_step() {
    let s = Scratch::new("section-record");
    for (kind, dir) in [("error", s.path("run-error")), ("panic", s.path("run-panic"))] {
        std::fs::create_dir_all(&dir).unwrap();
        std::env::set_var("GANG_RUN_DIR", &dir);
        let _ = execute(Config::local(3), |ctx| {
            ctx.barrier_section("train", |gang| {
                for step in 0..50u64 {
                    gang.set_step(step);
                    if gang.rank() == 1 && step == 12 {
                        match kind {
                            "error" => return Err(Error::from("the loss is NaN")),
                            _ => panic!("injected panic"),
                        }
                    }
                    gang.comm().barrier()?;
                }
                Ok(())
            })
        })
        .unwrap_err();
        let failures = RunDir::open(&dir).failures().unwrap();
        assert_eq!(failures.len(), 1, "only the failing rank records: {failures:?}");
        let f = &failures[0];
        assert_eq!(f.rank, 1);
        match kind {
            "error" => {
                assert_eq!(f.kind, FailureKind::Error);
                assert_eq!(f.message, "section train step 12: the loss is NaN");
            }
            _ => {
                assert_eq!(f.kind, FailureKind::Panic);
                assert_eq!(f.message, "section train step 12: panicked: injected panic");
            }
        }
    }
    std::env::remove_var("GANG_RUN_DIR");
}
