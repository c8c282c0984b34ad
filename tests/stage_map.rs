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
            .options(PlanOptions::new().with_target_rows(1)?)
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
    // And once more: the same stage finds its own committed result and is done.
    let before = std::fs::read(out.join("_SUCCESS")).unwrap();
    let r = map(2, &s.path("in"), &out, None).unwrap();
    assert!(r.already_complete);
    assert_eq!((r.partitions, r.skipped, r.rows), (5, 5, expected_rows(5).len() as u64));
    assert_eq!(std::fs::read(out.join("_SUCCESS")).unwrap(), before, "the manifest was rewritten");
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
    assert!(e.contains("unfinished stage of another job") && e.contains("allow overwriting"), "{e}");
    assert!(!e.contains("--overwrite"), "the library speaks a CLI flag: {e}");
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

/// A stage named `scale` whose function multiplies `x` by `factor`, versioned `version`;
/// with `fail_on_id` the function fails on the batch holding that id.
fn scale(
    ranks: usize,
    input: &Path,
    out: &Path,
    version: &str,
    factor: f64,
    fail_on_id: Option<i64>,
    overwrite: bool,
) -> gang::Result<StageReport> {
    let mut reports = execute(Config::local(ranks), |ctx| {
        MapStage::new(ctx, vec![Input::parse(input.to_str().unwrap())?])
            .options(PlanOptions::new().with_target_rows(1)?)
            .output(out, OutputFormat::default())
            .overwrite(overwrite)
            .name("scale")
            .version(version)
            .run(|b| {
                let ids = b.column(0).as_any().downcast_ref::<arrow_array::Int64Array>().unwrap();
                if fail_on_id.is_some_and(|bad| ids.values().contains(&bad)) {
                    return Err(Error::from("injected failure"));
                }
                let x = b.column(1).as_any().downcast_ref::<arrow_array::Float64Array>().unwrap();
                let scaled: arrow_array::Float64Array = x.iter().map(|v| v.map(|v| v * factor)).collect();
                Ok(arrow_array::RecordBatch::try_new(b.schema(), vec![b.column(0).clone(), Arc::new(scaled)])?)
            })
    })?;
    Ok(reports.remove(0))
}

/// `x / id` of every output row: the factor each row was scaled with, if x was id-derived.
fn factors(out: &Path) -> Vec<f64> {
    let m = gang::stage::Manifest::read(out).unwrap();
    let mut v = Vec::new();
    for p in &m.partitions {
        let file = std::fs::File::open(out.join(&p.file)).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
        for b in reader {
            let b = b.unwrap();
            let x = b.column(1).as_any().downcast_ref::<arrow_array::Float64Array>().unwrap();
            v.extend(x.values().iter().copied());
        }
    }
    v
}

#[test]
fn a_resumed_stage_whose_version_changed_does_not_reuse_the_old_partitions() {
    let s = Scratch::new("map-version");
    write_input(&s.path("in"), 5);
    let out = s.path("out");
    let unscaled = {
        let r = scale(1, &s.path("in"), &s.path("plain"), "v0", 1.0, None, false).unwrap();
        assert_eq!(r.partitions, 5);
        factors(&s.path("plain"))
    };
    // Version 1 commits partitions 0, 1 and 2 (one rank, in order), then fails on 3.
    scale(1, &s.path("in"), &out, "v1", 2.0, Some(3010), false).unwrap_err();
    // The same version resumes and keeps them ...
    let fp_v1 = {
        let again = s.path("again");
        scale(1, &s.path("in"), &again, "v1", 2.0, Some(3010), false).unwrap_err();
        let r = scale(2, &s.path("in"), &again, "v1", 2.0, None, false).unwrap();
        assert_eq!((r.partitions, r.skipped), (5, 3));
        r.manifest.fingerprint
    };
    // ... another version is another stage: refused, as the library says it ...
    let e = scale(2, &s.path("in"), &out, "v2", 3.0, None, false).unwrap_err();
    assert!(gang::stage::committer::overwrite_would_help(&e), "{e}");
    assert!(e.to_string().contains("unfinished stage of another job"), "{e}");
    // ... and, allowed to overwrite, recomputes every partition with the new function.
    let r = scale(2, &s.path("in"), &out, "v2", 3.0, None, true).unwrap();
    assert_eq!((r.partitions, r.skipped), (5, 0));
    assert_ne!(r.manifest.fingerprint, fp_v1);
    assert!(r.manifest.fingerprint.starts_with("scale-"), "{}", r.manifest.fingerprint);
    let expected: Vec<f64> = unscaled.iter().map(|x| x * 3.0).collect();
    assert_eq!(factors(&out), expected, "partitions of the old function were kept");
}

#[test]
fn the_same_stage_run_again_after_success_is_already_complete_and_another_is_refused() {
    let s = Scratch::new("map-complete");
    write_input(&s.path("in"), 4);
    let out = s.path("out");
    let first = scale(2, &s.path("in"), &out, "v1", 2.0, None, false).unwrap();
    assert!(!first.already_complete);
    let written = std::fs::read(out.join("part-00002.parquet")).unwrap();
    // The same stage (3 ranks now): done, nothing written, the committed manifest.
    let committed = std::sync::atomic::AtomicUsize::new(0);
    let again = scale(3, &s.path("in"), &out, "v1", 2.0, None, false).unwrap();
    assert!(again.already_complete);
    assert_eq!((again.partitions, again.skipped, again.rows), (4, 4, first.rows));
    assert_eq!(again.manifest, first.manifest);
    assert_eq!(std::fs::read(out.join("part-00002.parquet")).unwrap(), written);
    execute(Config::local(2), |ctx| {
        MapStage::new(ctx, vec![Input::parse(s.path("in").to_str().unwrap())?])
            .options(PlanOptions::new().with_target_rows(1)?)
            .output(&out, OutputFormat::default())
            .name("scale")
            .version("v1")
            .on_commit(|_| {
                committed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .run(|_| panic!("the function ran over a complete output"))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(committed.into_inner(), 0);
    // Another version: refused, naming both stages, in the library's words.
    let e = scale(2, &s.path("in"), &out, "v2", 2.0, None, false).unwrap_err();
    let msg = e.to_string();
    assert!(gang::stage::committer::overwrite_would_help(&e), "{msg}");
    assert!(msg.contains("already holds a committed result of a different stage"), "{msg}");
    assert!(msg.contains(&first.manifest.fingerprint) && msg.contains("allow overwriting"), "{msg}");
    assert!(!msg.contains("--overwrite"), "the library speaks a CLI flag: {msg}");
    assert_eq!(gang::stage::Manifest::read(&out).unwrap(), first.manifest, "the refused stage touched the output");
    // The same stage with overwrite on a first attempt recomputes it.
    let r = scale(2, &s.path("in"), &out, "v1", 2.0, None, true).unwrap();
    assert!(!r.already_complete);
    assert_eq!(r.skipped, 0);
}

#[test]
fn commits_behind_the_writes_report_each_partition_once_and_only_once_it_is_committed() {
    let s = Scratch::new("map-behind");
    write_input(&s.path("in"), 6);
    let out = s.path("out");
    let committed = s.path("out/_temporary/committed");
    let seen = std::sync::Mutex::new(Vec::new());
    execute(Config::local(1), |ctx| {
        MapStage::new(ctx, vec![Input::parse(s.path("in").to_str().unwrap())?])
            .options(PlanOptions::new().with_target_rows(1)?)
            .output(&out, OutputFormat::default())
            .name("add-y")
            .on_commit(|p| {
                // Reported only once the data and the sidecar that commits it are on disk.
                let data = committed.join(&p.file);
                let sidecar = committed.join(format!("{}.json", p.file));
                assert!(data.is_file() && sidecar.is_file(), "partition {} reported before its commit", p.id);
                assert_eq!(std::fs::metadata(&data).unwrap().len(), p.bytes);
                seen.lock().unwrap().push(p.id);
            })
            .run(add_y)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // Every partition once, in the order the rank wrote them.
    assert_eq!(seen.into_inner().unwrap(), (0..6).collect::<Vec<_>>());
    assert_eq!(read_output(&out), expected_rows(6));
}

#[test]
fn a_commit_that_fails_behind_the_writes_fails_the_stage_naming_the_file_with_nothing_visible() {
    let s = Scratch::new("map-behind-fail");
    write_input(&s.path("in"), 6);
    let out = s.path("out");
    let committed = s.path("out/_temporary/committed");
    let e = execute(Config::local(1), |ctx| {
        MapStage::new(ctx, vec![Input::parse(s.path("in").to_str().unwrap())?])
            .options(PlanOptions::new().with_target_rows(1)?)
            .output(&out, OutputFormat::default())
            .name("add-y")
            .on_commit(|p| {
                // The directory the later partitions are renamed into disappears.
                if p.id == 0 {
                    std::fs::rename(&committed, committed.with_file_name("moved-away")).unwrap();
                }
            })
            .run(add_y)
    })
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("_temporary/committed/part-0000"), "{msg}");
    assert!(!out.join("_SUCCESS").exists(), "a failed stage wrote _SUCCESS");
    assert!(visible(&out).is_empty(), "{:?}", visible(&out));
}
