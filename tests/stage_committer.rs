//! The output committer on the Local backend: refusals, overwrite, resume, crashes between
//! write and rename, and the `_SUCCESS` manifest.

mod common;

use arrow_array::{Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use common::{visible, Scratch};
use gang::stage::{Manifest, OutputCommitter, OutputFormat};
use gang::{execute, Config, Error};
use std::path::Path;
use std::sync::Arc;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("x", DataType::Float64, false)]))
}

/// Partition `p` holds ids `100p .. 100p + 10 + p`.
fn batch(p: usize) -> RecordBatch {
    let ids: Vec<i64> = (0..10 + p as i64).map(|i| 100 * p as i64 + i).collect();
    let xs: Vec<f64> = ids.iter().map(|&i| i as f64 / 4.0).collect();
    RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(ids)), Arc::new(Float64Array::from(xs))]).unwrap()
}

fn read_ids(path: &Path) -> Vec<i64> {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    reader
        .flat_map(|b| {
            let b = b.unwrap();
            b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec()
        })
        .collect()
}

/// A whole stage: `n` ranks write partitions `0..parts` round-robin and commit.
fn run_stage(out: &Path, ranks: usize, parts: usize, overwrite: bool, fp: &str) -> gang::Result<Manifest> {
    let mut m = execute(Config::local(ranks), |ctx| {
        let c = OutputCommitter::begin(ctx, out, OutputFormat::default(), overwrite, fp)?;
        for id in (ctx.rank()..parts).step_by(ctx.world()) {
            if !c.is_committed(id) {
                c.write_partition(id, &schema(), [Ok(batch(id))])?;
            }
        }
        c.finish(ctx, parts)
    })?;
    Ok(m.remove(0))
}

#[test]
fn the_manifest_lists_every_partition_with_rows_and_a_crc32_of_the_file() {
    let s = Scratch::new("manifest");
    let m = run_stage(&s.path("out"), 3, 7, false, "fp-a").unwrap();
    assert_eq!(m.partitions.len(), 7);
    assert_eq!(m.fingerprint, "fp-a");
    assert_eq!(m.format, "parquet:snappy");
    for (i, p) in m.partitions.iter().enumerate() {
        assert_eq!(p.id, i);
        assert_eq!(p.file, format!("part-{i:05}.parquet"));
        assert_eq!(p.rows, 10 + i as u64);
        let bytes = std::fs::read(s.path("out").join(&p.file)).unwrap();
        assert_eq!(p.bytes, bytes.len() as u64);
        assert_eq!(p.crc32, crc32fast::hash(&bytes), "{}", p.file);
        assert_eq!(
            read_ids(&s.path("out").join(&p.file)),
            batch(i).column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec()
        );
    }
    assert_eq!(m.total_rows, (0..7).map(|i| 10 + i).sum::<u64>());
    assert_eq!(m.schema["fields"][0]["name"], "id");
    assert_eq!(Manifest::read(&s.path("out")).unwrap(), m);
    m.verify(&s.path("out")).unwrap();
    assert!(!s.path("out").join("_temporary").exists(), "_temporary is left behind");
    assert_eq!(visible(&s.path("out")).len(), 7);
}

#[test]
fn a_damaged_file_fails_verification_naming_it() {
    let s = Scratch::new("damaged");
    let m = run_stage(&s.path("out"), 2, 2, false, "fp").unwrap();
    let f = s.path("out").join("part-00001.parquet");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&f, bytes).unwrap();
    let e = m.verify(&s.path("out")).unwrap_err().to_string();
    assert!(e.contains("part-00001.parquet") && e.contains("damaged"), "{e}");
}

#[test]
fn a_committed_result_of_another_stage_is_refused_on_every_rank_without_overwrite() {
    let s = Scratch::new("refuse");
    run_stage(&s.path("out"), 2, 3, false, "fp").unwrap();
    let result = execute(Config::local(3), |ctx| {
        let r = OutputCommitter::begin(ctx, s.path("out"), OutputFormat::default(), false, "fp-other");
        // Every rank must get the refusal (none proceeds, none hangs).
        match r {
            Err(Error::Output { detail, .. }) => Err::<(), _>(Error::Output { path: s.path("out"), detail }),
            Err(e) => panic!("rank {}: unexpected {e}", ctx.rank()),
            Ok(_) => panic!("rank {} was allowed into a committed directory", ctx.rank()),
        }
    });
    let e = result.unwrap_err();
    assert!(gang::stage::committer::overwrite_would_help(&e), "{e}");
    let e = e.to_string();
    assert!(e.contains("already holds a committed result of a different stage (_SUCCESS of fp "), "{e}");
    assert!(e.contains("this stage is fp-other") && e.ends_with("remove it or allow overwriting"), "{e}");
    // The committed result is untouched.
    assert_eq!(Manifest::read(&s.path("out")).unwrap().partitions.len(), 3);
    // The same fingerprint in another format is another stage too.
    let e = execute(Config::local(1), |ctx| {
        OutputCommitter::begin(ctx, s.path("out"), OutputFormat::Ipc { zstd: false }, false, "fp").map(|_| ())
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("different stage") && e.contains("writing ipc"), "{e}");
}

#[test]
fn a_committed_result_of_the_same_stage_is_already_complete_on_every_rank() {
    let s = Scratch::new("complete");
    let first = run_stage(&s.path("out"), 2, 3, false, "fp").unwrap();
    // A job commit interrupted after _SUCCESS, before _temporary was removed.
    std::fs::create_dir_all(s.path("out").join("_temporary/attempt-0")).unwrap();
    let again = execute(Config::local(3), |ctx| {
        let c = OutputCommitter::begin(ctx, s.path("out"), OutputFormat::default(), false, "fp")?;
        assert!(!c.resumed());
        assert_eq!(c.already_complete(), Some(&first), "rank {}", ctx.rank());
        assert!((0..3).all(|id| c.is_committed(id)));
        assert_eq!(c.committed_stats(2)?.unwrap(), first.partitions[2]);
        assert_eq!(c.committed_stats(3)?, None);
        let e = c.write_partition(0, &schema(), [Ok(batch(0))]).unwrap_err();
        assert!(e.to_string().contains("nothing is left to write"), "{e}");
        c.finish(ctx, 3)
    })
    .unwrap();
    assert!(again.iter().all(|m| *m == first), "every rank returns the committed manifest");
    assert_eq!(Manifest::read(&s.path("out")).unwrap(), first);
    assert!(!s.path("out").join("_temporary").exists(), "the leftover of the job commit stayed");
    first.verify(&s.path("out")).unwrap();
    // With overwrite, a first attempt replaces it all the same.
    let m = run_stage(&s.path("out"), 2, 2, true, "fp").unwrap();
    assert_eq!(m.partitions.len(), 2);
    assert_ne!(m.committed_unix_ns, first.committed_unix_ns);
}

#[test]
fn overwrite_replaces_a_committed_result() {
    let s = Scratch::new("overwrite");
    run_stage(&s.path("out"), 2, 5, false, "old").unwrap();
    let m = run_stage(&s.path("out"), 2, 2, true, "new").unwrap();
    assert_eq!(m.fingerprint, "new");
    assert_eq!(visible(&s.path("out")), vec!["part-00000.parquet", "part-00001.parquet"]);
    m.verify(&s.path("out")).unwrap();
}

#[test]
fn a_relaunched_stage_resumes_and_skips_committed_partitions() {
    let s = Scratch::new("resume");
    // Attempt 1: ranks commit partitions 0 and 1 of 4, then "crash" (no job commit).
    execute(Config::local(2), |ctx| {
        let c = OutputCommitter::begin(ctx, s.path("out"), OutputFormat::default(), false, "fp")?;
        assert!(!c.resumed());
        c.write_partition(ctx.rank(), &schema(), [Ok(batch(ctx.rank()))])?;
        Ok(())
    })
    .unwrap();
    assert!(visible(&s.path("out")).is_empty(), "task commits are visible: {:?}", visible(&s.path("out")));
    let before =
        std::fs::metadata(s.path("out").join("_temporary/committed/part-00000.parquet")).unwrap().modified().unwrap();
    // Attempt 2 with another world size: resumes, writes only 2 and 3.
    let m = execute(Config::local(3), |ctx| {
        let c = OutputCommitter::begin(ctx, s.path("out"), OutputFormat::default(), false, "fp")?;
        assert!(c.resumed());
        let committed: Vec<bool> = (0..4).map(|i| c.is_committed(i)).collect();
        assert_eq!(committed, vec![true, true, false, false]);
        assert_eq!(c.committed_stats(1)?.unwrap().rows, 11);
        if ctx.rank() == 2 {
            c.write_partition(2, &schema(), [Ok(batch(2))])?;
            c.write_partition(3, &schema(), [Ok(batch(3))])?;
        }
        c.finish(ctx, 4)
    })
    .unwrap()
    .remove(0);
    assert_eq!(m.partitions.iter().map(|p| p.rows).collect::<Vec<_>>(), vec![10, 11, 12, 13]);
    m.verify(&s.path("out")).unwrap();
    let after = std::fs::metadata(s.path("out").join("part-00000.parquet")).unwrap().modified().unwrap();
    assert_eq!(before, after, "a committed partition was rewritten");
}

#[test]
fn an_unfinished_stage_with_another_fingerprint_is_refused_and_overwrite_discards_it() {
    let s = Scratch::new("fingerprint");
    execute(Config::local(1), |ctx| {
        let c = OutputCommitter::begin(ctx, s.path("out"), OutputFormat::default(), false, "fp-1")?;
        c.write_partition(0, &schema(), [Ok(batch(0))])?;
        Ok(())
    })
    .unwrap();
    let e = run_stage(&s.path("out"), 2, 2, false, "fp-2").unwrap_err().to_string();
    assert!(
        e.contains("unfinished stage of another job") && e.contains("fp-1") && e.contains("allow overwriting"),
        "{e}"
    );
    let m = run_stage(&s.path("out"), 2, 2, true, "fp-2").unwrap();
    assert_eq!(m.fingerprint, "fp-2");
    m.verify(&s.path("out")).unwrap();
}

#[test]
fn another_output_format_is_another_stage() {
    let s = Scratch::new("format");
    execute(Config::local(1), |ctx| {
        OutputCommitter::begin(ctx, s.path("out"), OutputFormat::default(), false, "fp")?;
        Ok(())
    })
    .unwrap();
    let e = execute(Config::local(1), |ctx| {
        OutputCommitter::begin(ctx, s.path("out"), OutputFormat::Ipc { zstd: false }, false, "fp")?;
        Ok(())
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("format parquet:snappy") && e.contains("writing ipc"), "{e}");
}

#[test]
fn files_gang_did_not_write_are_never_touched_even_with_overwrite() {
    let s = Scratch::new("foreign");
    std::fs::create_dir_all(s.path("out")).unwrap();
    std::fs::write(s.path("out").join("notes.txt"), "mine").unwrap();
    for overwrite in [false, true] {
        let e = run_stage(&s.path("out"), 2, 1, overwrite, "fp").unwrap_err().to_string();
        assert!(e.contains("gang did not write (notes.txt)") && e.contains("choose another output directory"), "{e}");
    }
    assert_eq!(std::fs::read_to_string(s.path("out").join("notes.txt")).unwrap(), "mine");
    // A file where the directory should be.
    std::fs::write(s.0.join("file"), "x").unwrap();
    let e = run_stage(&s.0.join("file"), 1, 1, true, "fp").unwrap_err().to_string();
    assert!(e.contains("is a file, not a directory"), "{e}");
}

#[test]
fn a_crash_between_write_and_rename_leaves_nothing_visible_and_is_redone() {
    let s = Scratch::new("crash");
    execute(Config::local(1), |ctx| {
        let c = OutputCommitter::begin(ctx, s.path("out"), OutputFormat::default(), false, "fp")?;
        c.write_partition(0, &schema(), [Ok(batch(0))])?;
        Ok(())
    })
    .unwrap();
    let tmp = s.path("out").join("_temporary");
    // Partition 1 died while being written (a truncated attempt file); partition 2 died
    // after its data was renamed but before its sidecar was.
    std::fs::write(tmp.join("attempt-0/part-00001.parquet.r0"), b"PAR1 truncated").unwrap();
    std::fs::write(tmp.join("committed/part-00002.parquet"), b"PAR1 truncated too").unwrap();
    assert!(visible(&s.path("out")).is_empty());
    let m = execute(Config::local(2), |ctx| {
        let c = OutputCommitter::begin(ctx, s.path("out"), OutputFormat::default(), false, "fp")?;
        let committed: Vec<bool> = (0..3).map(|i| c.is_committed(i)).collect();
        assert_eq!(committed, vec![true, false, false]);
        if ctx.rank() == 1 {
            for id in [1, 2] {
                c.write_partition(id, &schema(), [Ok(batch(id))])?;
            }
        }
        c.finish(ctx, 3)
    })
    .unwrap()
    .remove(0);
    m.verify(&s.path("out")).unwrap();
    assert_eq!(read_ids(&s.path("out").join("part-00002.parquet")).len(), 12);
    assert!(!tmp.exists());
}

#[test]
fn a_failing_partition_leaves_no_file_and_a_missing_partition_blocks_the_job_commit() {
    let s = Scratch::new("missing");
    let e = execute(Config::local(2), |ctx| {
        let c = OutputCommitter::begin(ctx, s.path("out"), OutputFormat::default(), false, "fp")?;
        if ctx.rank() == 1 {
            let failing = [Ok(batch(1)), Err(Error::from("reader broke"))];
            let e = c.write_partition(1, &schema(), failing).unwrap_err();
            assert!(e.to_string().contains("reader broke"), "{e}");
            let leftovers = std::fs::read_dir(s.path("out").join("_temporary/attempt-0"))
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".r1"))
                .count();
            assert_eq!(leftovers, 0, "the attempt file of a failed partition is left behind");
            assert!(!c.is_committed(1));
        } else {
            c.write_partition(0, &schema(), [Ok(batch(0))])?;
        }
        c.finish(ctx, 2)
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("partition 1 of 2 was never committed"), "{e}");
    assert!(visible(&s.path("out")).is_empty(), "{:?}", visible(&s.path("out")));
    assert!(!s.path("out").join("_SUCCESS").exists());
}

#[test]
fn partitions_of_different_schemas_are_refused_at_job_commit() {
    let s = Scratch::new("schemas");
    let e = execute(Config::local(2), |ctx| {
        let c = OutputCommitter::begin(ctx, s.path("out"), OutputFormat::default(), false, "fp")?;
        if ctx.rank() == 0 {
            c.write_partition(0, &schema(), [Ok(batch(0))])?;
        } else {
            let other = batch(1).project(&[0]).unwrap();
            c.write_partition(1, &other.schema(), [Ok(other)])?;
        }
        c.finish(ctx, 2)
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("partition 1 has schema") && e.contains("same schema"), "{e}");
    assert!(visible(&s.path("out")).is_empty());
}

#[test]
fn a_batch_of_another_schema_inside_a_partition_is_refused() {
    let s = Scratch::new("batch-schema");
    execute(Config::local(1), |ctx| {
        let c = OutputCommitter::begin(ctx, s.path("out"), OutputFormat::default(), false, "fp")?;
        let other = batch(1).project(&[0]).unwrap();
        let e = c.write_partition(0, &schema(), [Ok(batch(0)), Ok(other)]).unwrap_err().to_string();
        assert!(e.contains("batch 1 of output partition 0"), "{e}");
        Ok(())
    })
    .unwrap();
}

#[test]
fn ipc_output_commits_the_same_way() {
    let s = Scratch::new("ipc");
    let m = execute(Config::local(2), |ctx| {
        let c = OutputCommitter::begin(ctx, s.path("out"), "ipc:zstd".parse()?, false, "fp")?;
        c.write_partition(ctx.rank(), &schema(), [Ok(batch(ctx.rank()))])?;
        c.finish(ctx, 2)
    })
    .unwrap()
    .remove(0);
    assert_eq!(visible(&s.path("out")), vec!["part-00000.arrow", "part-00001.arrow"]);
    m.verify(&s.path("out")).unwrap();
    let f = std::fs::File::open(s.path("out").join("part-00001.arrow")).unwrap();
    let rows: usize = arrow_ipc::reader::FileReader::try_new(f, None).unwrap().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 11);
}

#[test]
fn an_empty_stage_commits_an_empty_manifest() {
    let s = Scratch::new("empty");
    let m = run_stage(&s.path("out"), 2, 0, false, "fp").unwrap();
    assert!(m.partitions.is_empty());
    assert!(m.schema.is_null());
    assert!(s.path("out").join("_SUCCESS").is_file());
}

#[test]
fn hdf5_output_commits_the_same_way() {
    let s = Scratch::new("hdf5");
    let m = execute(Config::local(2), |ctx| {
        let c = OutputCommitter::begin(ctx, s.path("out"), OutputFormat::Hdf5, false, "fp")?;
        c.write_partition(ctx.rank(), &schema(), [Ok(batch(ctx.rank())), Ok(batch(ctx.rank()))])?;
        c.finish(ctx, 2)
    })
    .unwrap()
    .remove(0);
    assert_eq!(visible(&s.path("out")), vec!["part-00000.h5", "part-00001.h5"]);
    assert_eq!(m.partitions.iter().map(|p| p.rows).collect::<Vec<_>>(), vec![20, 22]);
    m.verify(&s.path("out")).unwrap();
}
