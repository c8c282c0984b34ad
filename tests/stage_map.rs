//! Map stages on the Local backend: the same output whatever the number of ranks, resume
//! after a failure, errors that name file, partition and rank.

mod common;
mod stage_common;

use gang::data::plan::{Input, PlanOptions};
use gang::stage::{MapStage, OutputFormat, StageReport};
use gang::{execute, Config, Error};
use stage_common::*;
use std::path::Path;
use std::sync::Arc;

fn map(ranks: usize, input: &Path, out: &Path, fail_on_id: Option<i64>) -> gang::Result<StageReport> {
    let mut reports = execute(Config::local(ranks), |ctx| {
        MapStage::new(ctx, vec![Input::parse(input.to_str().unwrap())?])
            .options(PlanOptions { target_rows: 1, ..PlanOptions::default() })
            .output(out, OutputFormat::default())
            .name("add-y")
            .prefetch(2)
            .run(|b| {
                if let Some(bad) = fail_on_id {
                    let ids = b.column(0).as_any().downcast_ref::<arrow_array::Int64Array>().unwrap();
                    if ids.values().contains(&bad) {
                        return Err(Error::from(format!("injected failure on id {bad}")));
                    }
                }
                add_y(b)
            })
    })?;
    Ok(reports.remove(0))
}

#[test]
fn the_output_is_the_same_at_1_2_and_3_ranks() {
    let s = Scratch::new("map-ranks");
    let total = write_input(&s.path("in"), 7);
    for ranks in [1, 2, 3] {
        let out = s.path(&format!("out-{ranks}"));
        let r = map(ranks, &s.path("in"), &out, None).unwrap();
        assert_eq!((r.partitions, r.skipped, r.rows), (7, 0, total), "{ranks} ranks");
        assert_eq!(read_output(&out), expected_rows(7), "{ranks} ranks");
        let m = gang::stage::Manifest::read(&out).unwrap();
        assert!(m.fingerprint.starts_with("add-y-"), "{}", m.fingerprint);
        assert_eq!(m.schema["fields"][2]["name"], "y");
    }
}

#[test]
fn a_failing_function_names_file_partition_and_rank_and_leaves_nothing_visible_then_a_rerun_resumes() {
    let s = Scratch::new("map-fail");
    write_input(&s.path("in"), 5);
    let out = s.path("out");
    // One rank processes partitions in order: 0, 1, 2 commit, 3 fails.
    let e = map(1, &s.path("in"), &out, Some(3010)).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Input { rank: Some(0), .. }), "{e:?}");
    assert!(msg.contains("in-03.parquet") && msg.contains("partition 3") && msg.contains("rank 0"), "{msg}");
    assert!(msg.contains("injected failure on id 3010") && msg.contains("add-y"), "{msg}");
    assert!(visible(&out).is_empty(), "{:?}", visible(&out));
    assert!(!out.join("_SUCCESS").exists());
    // The same stage again, now healthy, with another number of ranks: 3 partitions skipped.
    let r = map(2, &s.path("in"), &out, None).unwrap();
    assert_eq!((r.partitions, r.skipped), (5, 3));
    assert_eq!(read_output(&out), expected_rows(5));
    // And once more: refused, the result is committed.
    let e = map(2, &s.path("in"), &out, None).unwrap_err().to_string();
    assert!(e.contains("already holds a committed result") && e.contains("--overwrite"), "{e}");
}

#[test]
fn a_failing_read_names_file_partition_and_rank() {
    let s = Scratch::new("map-read");
    write_input(&s.path("in"), 2);
    let out = s.path("out");
    let e = execute(Config::local(2), |ctx| {
        MapStage::new(ctx, vec![Input::parse(s.path("in").to_str().unwrap())?])
            .output(&out, OutputFormat::default())
            .reader(Arc::new(|_, _, _| Err(Error::from("the disk is on fire"))))
            .run(Ok)
    })
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("in-0")
            && msg.contains("partition")
            && msg.contains("rank")
            && msg.contains("the disk is on fire"),
        "{msg}"
    );
    assert!(visible(&out).is_empty());
}

#[test]
fn another_stage_name_over_the_same_input_is_another_stage() {
    let s = Scratch::new("map-name");
    write_input(&s.path("in"), 3);
    let out = s.path("out");
    map(1, &s.path("in"), &out, Some(1005)).unwrap_err();
    let e = execute(Config::local(1), |ctx| {
        MapStage::new(ctx, vec![Input::parse(s.path("in").to_str().unwrap())?])
            .output(&out, OutputFormat::default())
            .name("other")
            .run(Ok)
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("unfinished stage of another job") && e.contains("--overwrite"), "{e}");
}

#[test]
fn a_stage_without_output_is_refused() {
    let s = Scratch::new("map-noout");
    write_input(&s.path("in"), 1);
    let e = execute(Config::local(1), |ctx| {
        MapStage::new(ctx, vec![Input::parse(s.path("in").to_str().unwrap())?]).run(Ok)
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("no output directory"), "{e}");
}

#[test]
fn ipc_output_holds_the_same_rows() {
    let s = Scratch::new("map-ipc");
    write_input(&s.path("in"), 3);
    let out = s.path("out");
    let r = execute(Config::local(2), |ctx| {
        MapStage::new(ctx, vec![Input::parse(s.path("in").to_str().unwrap())?])
            .output(&out, "ipc:zstd".parse()?)
            .run(add_y)
    })
    .unwrap()
    .remove(0);
    assert_eq!(r.rows, expected_rows(3).len() as u64);
    assert_eq!(visible(&out), vec!["part-00000.arrow", "part-00001.arrow", "part-00002.arrow"]);
    r.manifest.verify(&out).unwrap();
}
