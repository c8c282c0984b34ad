//! The built-in jobs as real gangs (`gang <job> -n N` through mpirun): the same inputs give
//! the same outputs and statistics at 1, 2 and 4 ranks, on data written by gang and by
//! pyarrow/h5py, and conversions between formats keep every value.

mod common;
mod data_support;
mod python;

use arrow_array::types::{Float32Type, Float64Type, Int64Type};
use common::{assert_success, gang, gang_env, visible, Scratch};
use gang::data::{Input, PartitionPlan, PlanOptions};
use gang::stage::Manifest;
use std::path::Path;

/// (file, rows, crc32) of every committed partition: equal lists mean byte-identical outputs.
fn digest(dir: &Path) -> Vec<(String, u64, u32)> {
    let m = Manifest::read(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    m.verify(dir).unwrap();
    m.partitions.iter().map(|p| (p.file.clone(), p.rows, p.crc32)).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every row of a dataset, in input order, as one batch per partition.
fn read(spec: &str) -> Vec<arrow_array::RecordBatch> {
    let opts = PlanOptions::default();
    let plan = PartitionPlan::discover(&[Input::parse(spec).unwrap()], &opts).unwrap();
    data_support::read_all(&plan, &opts)
}

#[test]
fn gen_stats_and_standardize_are_identical_at_1_2_and_4_ranks() {
    let sc = Scratch::new("jobs-ranks");
    let runs = sc.path("runs");
    let mut gens = Vec::new();
    let mut stats = Vec::new();
    let mut stds = Vec::new();
    for n in ["1", "2", "4"] {
        let g = sc.path(&format!("gen-{n}"));
        assert_success(&gang(
            &[
                "gen",
                "-n",
                n,
                "--rows",
                "30000",
                "--features",
                "6",
                "--partitions",
                "5",
                "--batch-size",
                "4000",
                "--output",
                s(&g),
            ],
            &runs,
        ));
        gens.push(digest(&g));
        // Statistics of the same (rank-1) data at every gang size.
        let gen1 = sc.path("gen-1");
        let out = assert_success(&gang(&["stats", "-n", n, "--no-tag-output", "--input", s(&gen1), "--json"], &runs));
        stats.push(out);
        let st = sc.path(&format!("std-{n}"));
        let out = assert_success(&gang(&["standardize", "-n", n, "--input", s(&gen1), "--output", s(&st)], &runs));
        assert!(out.contains("every partition decoded once"), "{out}");
        stds.push(digest(&st));
    }
    assert_eq!(gens[0].len(), 5);
    assert!(gens.iter().all(|g| g == &gens[0]), "gen outputs differ between gang sizes: {gens:?}");
    assert!(stats.iter().all(|j| j == &stats[0]), "stats differ between gang sizes:\n{}", stats.join("\n---\n"));
    let parsed: serde_json::Value = serde_json::from_str(&stats[0]).unwrap();
    assert_eq!(parsed["rows"], 30000);
    assert!(stds.iter().all(|d| d == &stds[0]), "standardize outputs differ between gang sizes");
    // The statistics pass keeps its decoded batches for the map stage when the rank's input
    // fits in the budget: kept (the default, above: every partition decoded once), kept on
    // one rank of two (a budget between the two ranks' inputs) and never kept give the same
    // bytes.
    let gen1 = sc.path("gen-1");
    for (budget, once) in [("0", "0 of 5"), ("500000", "2 of 5")] {
        let st = sc.path(&format!("std-keep-{budget}"));
        let out = assert_success(&gang_env(
            &["standardize", "-n", "2", "--input", s(&gen1), "--output", s(&st)],
            &runs,
            &[("GANG_KEEP_BYTES", budget)],
        ));
        assert!(out.contains(&format!("{once} partitions decoded once; the others were read again")), "{out}");
        assert!(digest(&st) == stds[0], "GANG_KEEP_BYTES={budget}: another output");
    }
    let bad = gang_env(
        &["standardize", "-n", "2", "--input", s(&gen1), "--output", s(&sc.path("std-bad"))],
        &runs,
        &[("GANG_KEEP_BYTES", "lots")],
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("GANG_KEEP_BYTES=\"lots\" is not a number of bytes"), "{err}");

    // The standardized features have mean 0 and std 1; labels and ids are untouched.
    let out = assert_success(&gang(
        &["stats", "-n", "2", "--no-tag-output", "--input", s(&sc.path("std-2")), "--json"],
        &runs,
    ));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    for c in j["columns"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        if name.starts_with('f') {
            assert!(c["mean"].as_f64().unwrap().abs() < 1e-5, "{name}: {c}");
            assert!((c["std"].as_f64().unwrap() - 1.0).abs() < 1e-5, "{name}: {c}");
        }
    }
    let before = read(s(&sc.path("gen-1")));
    let after = read(s(&sc.path("std-2")));
    let ids = |b: &[arrow_array::RecordBatch]| data_support::column::<Int64Type>(b, "id");
    assert_eq!(ids(&before), ids(&after));
    assert_eq!(data_support::column::<Int64Type>(&before, "y"), data_support::column::<Int64Type>(&after, "y"));
}

#[test]
fn convert_round_trips_parquet_hdf5_ipc_parquet_keeping_every_value() {
    let sc = Scratch::new("jobs-convert");
    let runs = sc.path("runs");
    let (gen, h5, ipc, back) = (sc.path("gen"), sc.path("h5"), sc.path("ipc"), sc.path("back"));
    assert_success(&gang(
        &[
            "gen",
            "-n",
            "2",
            "--rows",
            "12345",
            "--features",
            "3",
            "--classes",
            "0",
            "--partitions",
            "4",
            "--output",
            s(&gen),
        ],
        &runs,
    ));
    assert_success(&gang(
        &["convert", "-n", "2", "--input", s(&gen), "--output", s(&h5), "--format", "hdf5", "--partitions", "3"],
        &runs,
    ));
    assert_eq!(digest(&h5).len(), 3);
    // HDF5 files are inputs one by one (`file.h5`), in order.
    let mut args: Vec<String> =
        ["convert", "-n", "4", "--output", s(&ipc), "--format", "ipc:zstd", "--partitions", "7"]
            .map(String::from)
            .to_vec();
    for p in Manifest::read(&h5).unwrap().partitions {
        args.push("--input".into());
        args.push(s(&h5.join(&p.file)).to_string());
    }
    assert_success(&gang(&args.iter().map(String::as_str).collect::<Vec<_>>(), &runs));
    assert_success(&gang(
        &["convert", "-n", "1", "--input", s(&ipc), "--output", s(&back), "--partitions", "2"],
        &runs,
    ));
    assert_eq!(digest(&ipc).len(), 7);

    let (a, b) = (read(s(&gen)), read(s(&back)));
    assert_eq!(data_support::column::<Int64Type>(&a, "id"), (0..12345).collect::<Vec<i64>>());
    assert_eq!(data_support::column::<Int64Type>(&a, "id"), data_support::column::<Int64Type>(&b, "id"));
    for f in ["f0", "f1", "f2"] {
        assert_eq!(data_support::column::<Float32Type>(&a, f), data_support::column::<Float32Type>(&b, f), "{f}");
    }
    assert_eq!(data_support::column::<Float64Type>(&a, "y"), data_support::column::<Float64Type>(&b, "y"));
}

#[test]
fn stats_of_pyarrow_and_h5py_files_are_identical_at_1_2_and_4_ranks() {
    let fx = data_support::python_fixtures();
    let sc = Scratch::new("jobs-pyfixtures");
    let runs = sc.path("runs");
    for input in [fx.join("hive"), fx.join("rowgroups.parquet"), fx.join("data.h5")] {
        let mut outs = Vec::new();
        for n in ["1", "2", "4"] {
            // Small partitions so that several ranks share the work.
            let out = assert_success(&gang(
                &["stats", "-n", n, "--no-tag-output", "--input", s(&input), "--partition-rows", "700", "--json"],
                &runs,
            ));
            outs.push(out);
        }
        assert!(outs.iter().all(|o| o == &outs[0]), "{}: stats differ between gang sizes", input.display());
        let j: serde_json::Value = serde_json::from_str(&outs[0]).unwrap();
        let id_or_a = j["columns"][0].clone();
        match input.file_name().unwrap().to_str().unwrap() {
            "hive" => {
                assert_eq!(j["rows"], 600);
                assert_eq!(id_or_a["mean"], 299.5);
            }
            "rowgroups.parquet" => {
                assert_eq!(j["rows"], 10000);
                assert_eq!(id_or_a["max"], 9999.0);
            }
            _ => {
                assert_eq!(j["rows"], 5000);
                assert_eq!(id_or_a["name"], "a");
                assert_eq!(id_or_a["max"], 4999.0 / 4.0);
            }
        }
    }
}

#[test]
fn corrupt_inputs_fail_the_gang_naming_file_partition_and_rank_with_nothing_written() {
    let sc = Scratch::new("jobs-corrupt");
    let runs = sc.path("runs");
    let gen = sc.path("gen");
    assert_success(&gang(
        &["gen", "-n", "2", "--rows", "40000", "--features", "2", "--partitions", "4", "--output", s(&gen)],
        &runs,
    ));

    // Pages overwritten with garbage (the footer intact): found while reading partition 2.
    let victim = gen.join("part-00002.parquet");
    let mut bytes = std::fs::read(&victim).unwrap();
    let n = bytes.len();
    for (i, b) in bytes[8..n * 2 / 3].iter_mut().enumerate() {
        *b = (i * 7 + 13) as u8;
    }
    std::fs::write(&victim, &bytes).unwrap();
    let out_dir = sc.path("out");
    let out = gang(&["standardize", "-n", "2", "--input", s(&gen), "--output", s(&out_dir)], &runs);
    let (_, stderr) = common::text(&out);
    assert!(!out.status.success());
    let root_cause =
        stderr.lines().find(|l| l.contains("failed first")).unwrap_or_else(|| panic!("no root cause:\n{stderr}"));
    for needle in ["part-00002.parquet", "partition 2", "rank "] {
        assert!(root_cause.contains(needle), "{needle:?} missing from: {root_cause}");
    }
    assert!(visible(&out_dir).is_empty(), "partial output visible: {:?}", visible(&out_dir));

    // Truncated (the footer gone): found while planning, before anything is written.
    std::fs::OpenOptions::new().write(true).open(&victim).unwrap().set_len(n as u64 / 2).unwrap();
    let out = gang(&["convert", "-n", "2", "--input", s(&gen), "--output", s(&out_dir), "--partitions", "2"], &runs);
    let (_, stderr) = common::text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("part-00002.parquet") && stderr.contains("truncated"), "{stderr}");
    assert!(visible(&out_dir).is_empty(), "partial output visible: {:?}", visible(&out_dir));
}

#[test]
fn a_zero_row_pyarrow_file_has_zero_rows_and_a_missing_input_is_said_not_to_exist() {
    let fx = data_support::python_fixtures();
    let sc = Scratch::new("jobs-badinput");
    let runs = sc.path("runs");
    let empty = fx.join("empty.parquet");
    let out = assert_success(&gang(&["stats", "-n", "2", "--no-tag-output", "--input", s(&empty), "--json"], &runs));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(j["rows"], 0);
    assert_eq!(j["columns"][0]["count"], 0);
    assert!(j["columns"][0]["mean"].is_null());
    // Beside a file with rows, it adds nothing.
    let both = assert_success(&gang(
        &[
            "stats",
            "-n",
            "2",
            "--no-tag-output",
            "--input",
            s(&empty),
            "--input",
            s(&fx.join("onegroup.parquet")),
            "--json",
        ],
        &runs,
    ));
    let j: serde_json::Value = serde_json::from_str(&both).unwrap();
    assert_eq!(j["rows"], 50_000);

    for missing in ["/nonexistent", "/nonexistent/data.parquet"] {
        let out = gang(&["stats", "-n", "2", "--input", missing], &runs);
        let (_, stderr) = common::text(&out);
        assert!(!out.status.success());
        // The launcher refuses it before any rank starts (the library, for programs of
        // their own, says "does not exist": tested with Input::parse).
        assert!(stderr.contains(missing) && stderr.contains("no such file or directory"), "{missing}: {stderr}");
        assert!(!stderr.contains("unknown input format"), "{stderr}");
    }
}

#[test]
fn one_pyarrow_file_with_fewer_row_groups_than_ranks_keeps_every_rank_busy() {
    let sc = Scratch::new("jobs-cut");
    let runs = sc.path("runs");
    // pyarrow's defaults: 2,000,000 rows in row groups of 1 Mi rows (2 row groups).
    let big = sc.path("big.parquet");
    let small = sc.path("small.parquet");
    let script = format!(
        "import numpy as np, pyarrow as pa, pyarrow.parquet as pq\n\
         i = np.arange(2_000_000, dtype=np.int64)\n\
         pq.write_table(pa.table({{'id': i}}), {big:?})\n\
         r = np.random.default_rng(3); x = r.standard_normal((50_000, 2)).astype(np.float32)\n\
         y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)\n\
         pq.write_table(pa.table({{'f0': x[:, 0], 'f1': x[:, 1], 'y': y}}), {small:?}, row_group_size=1 << 20)\n",
        big = s(&big),
        small = s(&small)
    );
    let out = python::python().args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "pyarrow: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(parquet_row_groups(&big), 2);

    // The plan of a 4-rank gang gives every rank rows.
    let o = PlanOptions::new().with_ranks(4);
    let plan = PartitionPlan::discover(&[Input::parse(s(&big)).unwrap()], &o).unwrap();
    let loads: Vec<u64> = plan.assign(4).iter().map(|ids| ids.iter().map(|&i| plan.partitions[i].rows).sum()).collect();
    assert!(loads.iter().all(|&l| l >= 450_000), "{loads:?}");
    let out = assert_success(&gang(&["stats", "-n", "4", "--no-tag-output", "--input", s(&big)], &runs));
    assert!(out.contains("over 4 ranks") && out.contains("2000000 rows"), "{out}");
    let n: usize = out.split('(').nth(1).and_then(|t| t.split(' ').next()).and_then(|t| t.parse().ok()).unwrap();
    assert!(n >= 4, "{n} partitions for 4 ranks: {out}");
    let j: serde_json::Value = serde_json::from_str(&assert_success(&gang(
        &["stats", "-n", "4", "--no-tag-output", "--input", s(&big), "--json"],
        &runs,
    )))
    .unwrap();
    assert_eq!(j["columns"][0]["count"], 2_000_000);
    assert_eq!(j["columns"][0]["max"], 1_999_999.0);
    assert_eq!(j["columns"][0]["mean"], 999_999.5);

    // Training on one 50,000-row file (one row group) at 2 ranks.
    let model = sc.path("model.safetensors");
    let out = assert_success(&gang(
        &[
            "train",
            "-n",
            "2",
            "--no-tag-output",
            "--input",
            s(&small),
            "--label",
            "y",
            "--epochs",
            "2",
            "--batch-size",
            "1024",
            "--output",
            s(&model),
        ],
        &runs,
    ));
    assert!(out.contains("50000 rows") && model.is_file(), "{out}");
}

fn parquet_row_groups(f: &Path) -> usize {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    SerializedFileReader::new(std::fs::File::open(f).unwrap()).unwrap().metadata().num_row_groups()
}
