//! A map stage over a Parquet dataset, for the tests that run it as a real gang.
//!
//! `map_stage INPUT OUTPUT [--format F] [--overwrite] [--fail-on-id ID]`
//!
//! Reads every partition of INPUT (columns `id: Int64`, `x: Float64`), adds
//! `y = 2 * x + 1`, and writes OUTPUT in format F (default `parquet`). With `--fail-on-id`
//! the function fails on the batch holding that id. With `GANG_TEST_DIE=R:K` in the
//! environment, rank R aborts the process right after committing its K-th partition (a
//! crash in the middle of the stage); with `GANG_TEST_HANG_ON_ID=ID`, the rank that maps
//! the batch holding that id stops there for good (a read or a function that never
//! returns). Prints one line `committed P partitions, skipped S,
//! rows N` from rank 0.

use arrow_array::{Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field};
use gang::data::plan::{Input, PlanOptions};
use gang::stage::{MapStage, OutputFormat};
use gang::{execute, Config, Error};
use std::sync::Arc;

fn main() {
    let (config, args) = Config::from_args(std::env::args().skip(1)).expect("arguments");
    let mut positional = Vec::new();
    let (mut format, mut overwrite, mut fail_on) = (OutputFormat::default(), false, None::<i64>);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--format" => format = it.next().expect("--format F").parse().expect("output format"),
            "--overwrite" => overwrite = true,
            "--fail-on-id" => fail_on = Some(it.next().expect("--fail-on-id ID").parse().expect("id")),
            _ => positional.push(a),
        }
    }
    let [input, output] = positional.as_slice() else {
        eprintln!("usage: map_stage INPUT OUTPUT [--format F] [--overwrite] [--fail-on-id ID]");
        std::process::exit(2);
    };
    let die: Option<(usize, usize)> = std::env::var("GANG_TEST_DIE").ok().map(|v| {
        let (r, k) = v.split_once(':').expect("GANG_TEST_DIE=RANK:PARTITIONS");
        (r.parse().expect("rank"), k.parse().expect("partitions"))
    });
    let hang_on: Option<i64> = std::env::var("GANG_TEST_HANG_ON_ID").ok().map(|v| v.parse().expect("an id"));
    let result = execute(config, |ctx| {
        let mut committed = 0usize;
        let report = MapStage::new(ctx, vec![Input::parse(input)?])
            .options(PlanOptions::new().with_target_rows(1)?)
            .output(output, format)
            .overwrite(overwrite)
            .name("add-y")
            .on_commit(|_| {
                committed += 1;
                if die == Some((ctx.rank(), committed)) {
                    eprintln!("rank {} dies after committing {committed} partition(s)", ctx.rank());
                    std::process::abort();
                }
            })
            .run(|batch| {
                if let Some(id) = hang_on {
                    let ids = batch.column_by_name("id").and_then(|c| c.as_any().downcast_ref::<Int64Array>());
                    if ids.is_some_and(|ids| ids.values().contains(&id)) {
                        eprintln!("rank {} hangs on id {id}", ctx.rank());
                        loop {
                            std::thread::sleep(std::time::Duration::from_secs(3600));
                        }
                    }
                }
                add_y(batch, fail_on)
            })?;
        if ctx.rank() == 0 {
            println!("committed {} partitions, skipped {}, rows {}", report.partitions, report.skipped, report.rows);
        }
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("map_stage: {e}");
        std::process::exit(1);
    }
}

/// `y = 2x + 1` as a new column.
fn add_y(batch: RecordBatch, fail_on: Option<i64>) -> gang::Result<RecordBatch> {
    let ids =
        batch.column_by_name("id").and_then(|c| c.as_any().downcast_ref::<Int64Array>()).ok_or("no Int64 column id")?;
    if let Some(bad) = fail_on {
        if ids.values().contains(&bad) {
            return Err(Error::from(format!("injected failure on id {bad}")));
        }
    }
    let x = batch
        .column_by_name("x")
        .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
        .ok_or("no Float64 column x")?;
    let y: Float64Array = x.iter().map(|v| v.map(|v| 2.0 * v + 1.0)).collect();
    let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("y", DataType::Float64, true));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(y));
    Ok(RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), columns)?)
}
