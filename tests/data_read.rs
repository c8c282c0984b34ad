//! Reading partitioned data: files written by pyarrow and h5py, and by gang itself; values
//! are checked, not just row counts.

mod data_support;
mod python;

use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt16Type, UInt8Type};
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt16Array,
};
use arrow_schema::DataType;
use data_support::{column, python_fixtures, read_all, scratch, strings};
use gang::data::{
    read_partition, FileFormat, Hdf5TwoD, Hdf5Writer, Input, PartitionPlan, PlanOptions, Prefetch, PrefetchOptions,
    Slice,
};
use gang::{execute, Config};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::path::Path;
use std::sync::Arc;

fn opts(target_rows: u64, batch_size: usize) -> PlanOptions {
    PlanOptions::new().with_target_rows(target_rows).unwrap().with_batch_size(batch_size).unwrap()
}

fn input(p: &Path) -> Input {
    Input::parse(p.to_str().unwrap()).unwrap()
}

#[test]
fn pyarrow_row_groups_group_into_partitions_with_projection() {
    let f = python_fixtures().join("rowgroups.parquet");
    let o = opts(2500, 300).with_columns(["x", "id"]);
    let plan = PartitionPlan::discover(&[input(&f)], &o).unwrap();
    // Ten row groups of 1000: pairs (3000 would be farther from 2500 than 2000).
    let slices: Vec<Slice> = plan.partitions.iter().map(|p| p.slice.clone()).collect();
    assert_eq!(slices, (0..5).map(|k| Slice::RowGroups(2 * k..2 * k + 2)).collect::<Vec<_>>());
    assert!(plan.partitions.iter().all(|p| p.rows == 2000 && p.bytes > 0 && p.format == FileFormat::Parquet));
    assert_eq!(plan.partitions.iter().map(|p| p.id).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    // Projection in the order asked for, nothing else decoded.
    let names: Vec<&str> = plan.schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, vec!["x", "id"]);
    let batches = read_all(&plan, &o);
    let ids = column::<Int64Type>(&batches, "id");
    assert_eq!(ids, (0..10_000).collect::<Vec<i64>>());
    let xs = column::<Float64Type>(&batches, "x");
    assert!(xs.iter().zip(&ids).all(|(x, i)| *x == *i as f64 / 4.0));

    // Without projection: every column, strings included.
    let plan = PartitionPlan::discover(&[input(&f)], &opts(1 << 20, 4096)).unwrap();
    assert_eq!(plan.partitions.len(), 1);
    assert_eq!(plan.partitions[0].slice, Slice::RowGroups(0..10));
    let batches = read_all(&plan, &opts(1 << 20, 4096));
    let names = strings(&batches, "name");
    assert_eq!(names[9_999].as_deref(), Some("n9999"));
    assert_eq!(column::<Int32Type>(&batches, "small")[13], 13 % 7);
}

#[test]
fn every_row_is_read_exactly_once_whatever_the_world() {
    let f = python_fixtures().join("rowgroups.parquet");
    let o = opts(1000, 1000).with_columns(["id"]);
    let plan = PartitionPlan::discover(&[input(&f)], &o).unwrap();
    assert_eq!(plan.partitions.len(), 10);
    for world in [1, 2, 3, 4] {
        let mut ids = Vec::new();
        for rank in 0..world {
            let mine = plan.for_rank(rank, world);
            assert!(mine.len() >= 10 / world, "rank {rank} of {world} has {} partitions", mine.len());
            for p in mine {
                let batches: Vec<RecordBatch> =
                    read_partition(p, &plan.schema, &o).unwrap().map(Result::unwrap).collect();
                ids.extend(column::<Int64Type>(&batches, "id"));
            }
        }
        ids.sort_unstable();
        assert_eq!(ids, (0..10_000).collect::<Vec<i64>>(), "world {world}");
    }
}

#[test]
fn hive_directories_become_columns_and_junk_is_skipped() {
    let dir = python_fixtures().join("hive");
    let o = opts(100, 64);
    let plan = PartitionPlan::discover(&[input(&dir)], &o).unwrap();
    let names: Vec<&str> = plan.schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, vec!["id", "v", "year"]);
    assert_eq!(plan.schema.field(2).data_type(), &DataType::Utf8);
    let files: Vec<String> =
        plan.partitions.iter().map(|p| p.file.strip_prefix(&dir).unwrap().to_string_lossy().into_owned()).collect();
    let mut distinct = files.clone();
    distinct.dedup();
    assert_eq!(distinct, vec!["year=2023/part-0.parquet", "year=2024/part-0.parquet", "year=2024/part-1.parquet"]);
    // Row groups of 128 rows grouped towards 100: one per partition, never across files.
    assert!(plan.partitions.iter().all(|p| p.rows <= 128));
    assert_eq!(plan.total_rows(), 600);
    let batches = read_all(&plan, &o);
    let ids = column::<Int64Type>(&batches, "id");
    assert_eq!(ids, (0..600).collect::<Vec<i64>>());
    let v = column::<Float64Type>(&batches, "v");
    assert!(v.iter().zip(&ids).all(|(v, i)| *v == 2.0 * *i as f64));
    let years = strings(&batches, "year");
    for (i, y) in ids.iter().zip(&years) {
        assert_eq!(y.as_deref(), Some(if *i < 300 { "2023" } else { "2024" }), "id {i}");
    }
    // A Hive key can be selected like any column, alone.
    let o = opts(1 << 20, 1000).with_columns(["year"]);
    let plan = PartitionPlan::discover(&[input(&dir)], &o).unwrap();
    let years = strings(&read_all(&plan, &o), "year");
    assert_eq!(years.len(), 600);
    assert_eq!(years.iter().filter(|y| y.as_deref() == Some("2024")).count(), 300);
}

#[test]
fn h5py_datasets_become_columns() {
    let f = python_fixtures().join("data.h5");
    let o = opts(1200, 256);
    let plan = PartitionPlan::discover(&[input(&f)], &o).unwrap();
    // Every 1-D/2-D numeric dataset at the root, by name; strings, 3-D and groups skipped.
    assert_eq!(plan.partitions[0].datasets, vec!["a", "b", "c", "m"]);
    let fields: Vec<(String, DataType)> =
        plan.schema.fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect();
    assert_eq!(
        fields,
        vec![
            ("a".into(), DataType::Float64),
            ("b".into(), DataType::Int32),
            ("c".into(), DataType::UInt8),
            ("m_0".into(), DataType::Float32),
            ("m_1".into(), DataType::Float32),
            ("m_2".into(), DataType::Float32),
        ]
    );
    let slices: Vec<Slice> = plan.partitions.iter().map(|p| p.slice.clone()).collect();
    assert_eq!(slices, (0..5).map(|k| Slice::Rows(k * 1000..(k + 1) * 1000)).collect::<Vec<_>>());
    let batches = read_all(&plan, &o);
    let b = column::<Int32Type>(&batches, "b");
    assert_eq!(b, (0..5000).collect::<Vec<i32>>());
    assert!(column::<Float64Type>(&batches, "a").iter().enumerate().all(|(i, a)| *a == i as f64 / 4.0));
    assert!(column::<UInt8Type>(&batches, "c").iter().enumerate().all(|(i, c)| *c as usize == i % 256));
    for j in 0..3 {
        let m = column::<Float32Type>(&batches, &format!("m_{j}"));
        assert!(m.iter().enumerate().all(|(i, v)| *v == (3 * i + j) as f32), "m_{j}");
    }
}

#[test]
fn h5py_two_d_as_fixed_size_list_and_projection() {
    let f = python_fixtures().join("data.h5");
    let spec = format!("{}:m,a", f.display());
    let o = opts(1 << 20, 700).with_hdf5_2d(Hdf5TwoD::FixedSizeList);
    let plan = PartitionPlan::discover(&[Input::parse(&spec).unwrap()], &o).unwrap();
    let names: Vec<&str> = plan.schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, vec!["m", "a"]);
    let batches = read_all(&plan, &o);
    assert_eq!(batches.len(), 8); // 5000 rows in batches of 700
    let mut row = 0usize;
    for b in &batches {
        let m = b.column(0).as_any().downcast_ref::<FixedSizeListArray>().unwrap();
        assert_eq!(m.value_length(), 3);
        for i in 0..m.len() {
            let v = m.value(i);
            let v = v.as_any().downcast_ref::<arrow_array::Float32Array>().unwrap();
            assert_eq!(v.values().to_vec(), vec![(3 * row) as f32, (3 * row + 1) as f32, (3 * row + 2) as f32]);
            row += 1;
        }
    }
    assert_eq!(row, 5000);

    // Projection reads only the datasets it needs, in the order asked for.
    let o = opts(2500, 1000).with_columns(["m_1", "b"]);
    let plan = PartitionPlan::discover(&[input(&f)], &o).unwrap();
    let batches = read_all(&plan, &o);
    assert_eq!(batches[0].num_columns(), 2);
    assert_eq!(column::<Int32Type>(&batches, "b"), (0..5000).collect::<Vec<i32>>());
    assert!(column::<Float32Type>(&batches, "m_1").iter().enumerate().all(|(i, v)| *v == (3 * i + 1) as f32));
}

/// `n` rows: id = start + i, x = id * 1.5 with every 10th null.
fn sample(start: i64, n: i64) -> RecordBatch {
    let ids: Vec<i64> = (start..start + n).collect();
    let x: Vec<Option<f64>> = ids.iter().map(|&i| (i % 10 != 0).then_some(i as f64 * 1.5)).collect();
    RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids)) as ArrayRef),
        ("x", Arc::new(Float64Array::from(x)) as ArrayRef),
    ])
    .unwrap()
}

fn write_parquet(path: &Path, batches: &[RecordBatch], row_group: usize) {
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group))
        .set_compression(Compression::ZSTD(Default::default()))
        .build();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batches[0].schema(), Some(props)).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

fn write_ipc(path: &Path, batches: &[RecordBatch]) {
    let mut w =
        arrow_ipc::writer::FileWriter::try_new(std::fs::File::create(path).unwrap(), &batches[0].schema()).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn gang_written_parquet_and_ipc_read_back_together() {
    let dir = scratch("mixed");
    let pq = dir.join("a.parquet");
    write_parquet(&pq, &[sample(0, 1000), sample(1000, 500)], 250);
    let ipc = dir.join("b.arrow");
    write_ipc(&ipc, &[sample(1500, 300), sample(1800, 300), sample(2100, 900)]);
    let o = opts(600, 200);
    let plan = PartitionPlan::discover(&[input(&pq), input(&ipc)], &o).unwrap();
    let slices: Vec<Slice> = plan.partitions.iter().map(|p| p.slice.clone()).collect();
    assert_eq!(
        slices,
        vec![
            Slice::RowGroups(0..2),
            Slice::RowGroups(2..4),
            Slice::RowGroups(4..6),
            Slice::Batches(0..2),
            Slice::Batches(2..3),
        ]
    );
    assert_eq!(plan.partitions.iter().map(|p| p.rows).collect::<Vec<_>>(), vec![500, 500, 500, 600, 900]);
    let batches = read_all(&plan, &o);
    let ids = column::<Int64Type>(&batches, "id");
    assert_eq!(ids, (0..3000).collect::<Vec<i64>>());
    let mut seen = 0;
    for b in &batches {
        let x = b.column_by_name("x").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
        let id = b.column_by_name("id").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            let want = (id.value(i) % 10 != 0).then_some(id.value(i) as f64 * 1.5);
            assert_eq!(x.is_valid(i).then(|| x.value(i)), want);
            seen += 1;
        }
    }
    assert_eq!(seen, 3000);

    // The pipeline gives the same batches, in the same order, tagged with partition ids.
    for threads in [1, 3] {
        let piped: Vec<(usize, RecordBatch)> = Prefetch::new(
            plan.partitions.clone(),
            plan.schema.clone(),
            o.clone(),
            PrefetchOptions::new().with_depth(2).with_threads(threads),
        )
        .map(Result::unwrap)
        .collect();
        assert_eq!(piped.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(), batches);
        let mut ids: Vec<usize> = piped.iter().map(|(id, _)| *id).collect();
        ids.dedup();
        assert_eq!(ids, vec![0, 1, 2, 3, 4]);
    }
}

#[test]
fn hdf5_writer_round_trips_and_compresses() {
    let dir = scratch("h5writer");
    let path = dir.join("out.h5");
    let batch = |start: usize, n: usize| {
        RecordBatch::try_from_iter([
            ("x", Arc::new(Float64Array::from_iter_values((start..start + n).map(|i| i as f64 * 0.5))) as ArrayRef),
            ("id", Arc::new(Int64Array::from_iter_values((start..start + n).map(|i| i as i64))) as ArrayRef),
            ("k", Arc::new(UInt16Array::from_iter_values((start..start + n).map(|i| (i % 1000) as u16))) as ArrayRef),
        ])
        .unwrap()
    };
    let first = batch(0, 70_000);
    let mut w = Hdf5Writer::create(&path, &first.schema()).unwrap();
    w.write(&first).unwrap();
    w.write(&batch(70_000, 0)).unwrap();
    w.write(&batch(70_000, 30_000)).unwrap();
    assert_eq!(w.rows(), 100_000);
    w.finish().unwrap();

    let f = hdf5::File::open(&path).unwrap();
    let ds = f.dataset("x").unwrap();
    assert_eq!(ds.shape(), vec![100_000]);
    assert!(ds.is_chunked() && ds.is_resizable());
    assert!(ds.filters().iter().any(|x| matches!(x, hdf5::filters::Filter::Deflate(4))), "{:?}", ds.filters());
    drop((ds, f));

    let o = opts(40_000, 65536);
    let plan = PartitionPlan::discover(&[input(&path)], &o).unwrap();
    assert_eq!(plan.partitions.len(), 3);
    let batches = read_all(&plan, &o);
    // Datasets come back sorted by name.
    let names: Vec<&str> = plan.schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, vec!["id", "k", "x"]);
    assert_eq!(column::<Int64Type>(&batches, "id"), (0..100_000).collect::<Vec<i64>>());
    assert!(column::<Float64Type>(&batches, "x").iter().enumerate().all(|(i, x)| *x == i as f64 * 0.5));
    assert!(column::<UInt16Type>(&batches, "k").iter().enumerate().all(|(i, k)| *k as usize == i % 1000));

    // h5py reads it too.
    let script = format!(
        "import h5py, numpy as np; f = h5py.File({:?}, 'r'); assert f['x'].compression == 'gzip'; \
         assert (f['id'][:] == np.arange(100000)).all(); print('ok')",
        path.display().to_string()
    );
    let out = python::python().args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Non-numeric columns and nulls are refused with the column named.
    let s = RecordBatch::try_from_iter([("name", Arc::new(StringArray::from(vec!["a"])) as ArrayRef)]).unwrap();
    let e = Hdf5Writer::create(dir.join("s.h5"), &s.schema()).unwrap_err();
    assert!(matches!(e, gang::Error::Output { .. }) && e.to_string().contains("\"name\""), "{e}");
    let nulls = sample(0, 20);
    let mut w = Hdf5Writer::create(dir.join("n.h5"), &nulls.schema()).unwrap();
    let e = w.write(&nulls).unwrap_err().to_string();
    assert!(e.contains("column x has 2 nulls"), "{e}");
}

#[test]
fn rank_zero_plans_and_every_rank_gets_the_plan_or_the_error() {
    let f = python_fixtures().join("rowgroups.parquet");
    let o = opts(3000, 1000);
    let plans = execute(Config::local(3), |ctx| PartitionPlan::discover_on_root(ctx.comm(), &[input(&f)], &o)).unwrap();
    let direct = PartitionPlan::discover(&[input(&f)], &o).unwrap();
    assert!(plans.iter().all(|p| *p == direct));

    let missing = python_fixtures().join("nope.parquet");
    let errors = execute(Config::local(3), |ctx| {
        let r = PartitionPlan::discover_on_root(ctx.comm(), &[Input::Parquet(missing.clone())], &o);
        Ok(r.unwrap_err().to_string())
    })
    .unwrap();
    for e in errors {
        assert!(e.contains("nope.parquet") && e.contains("does not exist"), "{e}");
    }
}

/// The first rows of the pages of row group 0, column `col`, from the file's offset index.
fn page_starts(f: &Path, col: usize) -> Vec<u64> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let opts = parquet::file::serialized_reader::ReadOptionsBuilder::new().with_page_index().build();
    let r = SerializedFileReader::new_with_options(std::fs::File::open(f).unwrap(), opts).unwrap();
    let index = r.metadata().page_index().expect("a page index");
    index.offset_index(0, col).unwrap().page_locations().iter().map(|l| l.first_row_index as u64).collect()
}

#[test]
fn single_row_group_pyarrow_files_are_cut_into_row_ranges_for_the_ranks() {
    for name in ["onegroup.parquet", "onegroup_index.parquet"] {
        let f = python_fixtures().join(name);
        // One rank: the row group whole, as always.
        let one = PartitionPlan::discover(&[input(&f)], &opts(1 << 20, 4096)).unwrap();
        assert_eq!(one.partitions.iter().map(|p| p.slice.clone()).collect::<Vec<_>>(), vec![Slice::RowGroups(0..1)]);
        for ranks in [2, 3, 4, 7] {
            let o = opts(1 << 20, 4096).with_ranks(ranks);
            let plan = PartitionPlan::discover(&[input(&f)], &o).unwrap();
            assert_eq!(plan, PartitionPlan::discover(&[input(&f)], &o).unwrap(), "deterministic");
            assert_eq!(PartitionPlan::from_bytes(&plan.to_bytes().unwrap()).unwrap(), plan, "serde");
            // Contiguous row ranges of row group 0 covering it exactly.
            let mut next = 0;
            for p in &plan.partitions {
                let Slice::RowGroupRows { row_group: 0, rows } = &p.slice else { panic!("{:?}", p.slice) };
                assert_eq!(rows.start, next);
                assert_eq!(p.rows, rows.end - rows.start);
                next = rows.end;
            }
            assert_eq!(next, 50_000);
            if name == "onegroup_index.parquet" && ranks <= 4 {
                // Cut at page boundaries only (pages of about 2,000 rows; at 7 ranks some
                // cuts fall inside pages, as pages are coarse for the balance).
                let pages = page_starts(&f, 0);
                assert!(pages.len() > 10, "{pages:?}");
                for p in &plan.partitions {
                    let Slice::RowGroupRows { rows, .. } = &p.slice else { unreachable!() };
                    assert!(pages.contains(&rows.start), "{name}: {} is not a page start", rows.start);
                }
            }
            // Every rank has its share within 10% (plus a page), and reads it.
            let share = 50_000 / ranks as u64;
            let a = plan.assign(ranks);
            let mut ids = Vec::new();
            for (rank, mine) in a.iter().enumerate() {
                let load: u64 = mine.iter().map(|&i| plan.partitions[i].rows).sum();
                assert!(load > 0 && load <= share + share / 10 + 2100, "{name}, {ranks} ranks: rank {rank} has {load}");
                for &i in mine {
                    let batches: Vec<RecordBatch> =
                        read_partition(&plan.partitions[i], &plan.schema, &o).unwrap().map(Result::unwrap).collect();
                    let got = column::<Int64Type>(&batches, "id");
                    let x = column::<Float64Type>(&batches, "x");
                    assert!(got.iter().zip(&x).all(|(&i, &x)| x == i as f64 / 4.0));
                    ids.extend(got);
                }
            }
            ids.sort_unstable();
            assert_eq!(ids, (0..50_000).collect::<Vec<i64>>(), "{name}, {ranks} ranks: each row exactly once");
        }
    }
}

#[test]
fn a_gang_on_the_local_backend_cuts_the_row_group_and_every_rank_reads() {
    let f = python_fixtures().join("onegroup_index.parquet");
    let o = opts(1 << 20, 1000);
    let per_rank = execute(Config::local(4), |ctx| {
        let plan = PartitionPlan::discover_on_root(ctx.comm(), &[input(&f)], &o)?;
        let mut ids = Vec::new();
        for p in plan.for_rank(ctx.rank(), ctx.world()) {
            for b in read_partition(p, &plan.schema, &o)? {
                ids.extend(column::<Int64Type>(&[b?], "id"));
            }
        }
        Ok(ids)
    })
    .unwrap();
    assert!(per_rank.iter().all(|ids| ids.len() > 10_000), "{:?}", per_rank.iter().map(Vec::len).collect::<Vec<_>>());
    let mut all: Vec<i64> = per_rank.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (0..50_000).collect::<Vec<i64>>());
}

#[test]
fn several_row_groups_are_cut_where_the_balance_needs_it() {
    // Three row groups of 10,000 over two ranks: 20,000 against 10,000 uncut.
    let dir = scratch("cut-three");
    let f = dir.join("three.parquet");
    write_parquet(&f, &[sample(0, 30_000)], 10_000);
    let o = opts(1 << 20, 4096).with_ranks(2);
    let plan = PartitionPlan::discover(&[input(&f)], &o).unwrap();
    let loads: Vec<u64> = plan.assign(2).iter().map(|ids| ids.iter().map(|&i| plan.partitions[i].rows).sum()).collect();
    assert_eq!(loads, vec![15_000, 15_000], "{:?}", plan.partitions);
    let ids = column::<Int64Type>(&read_all(&plan, &o), "id");
    assert_eq!(ids, (0..30_000).collect::<Vec<i64>>());
    // Enough row groups for the ranks: nothing is cut.
    let o = opts(10_000, 4096).with_ranks(3);
    let plan = PartitionPlan::discover(&[input(&f)], &o).unwrap();
    assert!(plan.partitions.iter().all(|p| matches!(p.slice, Slice::RowGroups(_))));
}
