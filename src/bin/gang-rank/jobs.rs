//! The built-in jobs: command-line options and the glue between the library's pieces.

use crate::{input, usage};
use anyhow::{Context as _, Result};
use arrow_array::RecordBatch;
use gang::data::plan::{Input, PartitionPlan, PlanOptions};
use gang::data::{Prefetch, PrefetchOptions};
use gang::internal::jobs::gen::GenSpec;
use gang::internal::jobs::standardize::{
    feature_columns, standardize as standardize_batch, version as standardize_version,
};
use gang::internal::jobs::stats::{combine_across_ranks, TableSummary};
use gang::stage::map::StageOutput;
use gang::stage::{MapStage, OutputFormat, StageReport};
use gang::{execute, Config, Context, ReduceOp};
use gang_jobs::{ConvertArgs, GenArgs, InputArgs, OutputArgs, PredictArgs, SelftestArgs};
use gang_jobs::{StandardizeArgs, StatsArgs, TrainArgs};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The inputs of a job, parsed by the library (a spec it cannot read is an input failure).
fn inputs_of(a: &InputArgs) -> Result<Vec<Input>> {
    a.inputs.iter().map(|s| Input::parse(s).map_err(input)).collect()
}

/// How the library plans and reads the input.
fn plan_options(a: &InputArgs) -> PlanOptions {
    let o = PlanOptions::new()
        .with_target_rows(a.partition_rows.max(1))
        .and_then(|o| o.with_batch_size(usize::try_from(a.read_batch).unwrap_or(usize::MAX).max(1)))
        .expect("both are at least 1");
    match &a.columns {
        Some(c) => o.with_columns(c.iter().cloned()),
        None => o,
    }
}

/// The library's output format (gang-jobs checked the spelling; the library decides).
fn format_of(a: &OutputArgs) -> Result<OutputFormat> {
    a.format.parse::<OutputFormat>().map_err(|e| usage(anyhow::anyhow!("--format {}: {e}", a.format)))
}

pub fn hello(config: Config) -> Result<()> {
    execute(config, hello_rank)?;
    Ok(())
}

/// What one rank saw, sent to rank 0 as a line of text.
fn hello_rank(ctx: &Context) -> gang::Result<()> {
    let comm = ctx.comm();
    let (rank, n) = (ctx.rank(), ctx.world());
    comm.barrier()?;
    let sum = comm.allreduce_scalar(rank as u64, ReduceOp::Sum)?;
    let max = comm.allreduce_scalar(rank as u64, ReduceOp::Max)?;
    let mut v = [1.0f64, rank as f64];
    comm.allreduce(&mut v, ReduceOp::Sum)?;
    let expected_sum = (n * (n - 1) / 2) as u64;
    let right = sum == expected_sum && max == (n - 1) as u64 && v[0] == n as f64;
    let all_right = comm.allreduce_scalar(right, ReduceOp::And)?;
    let line = format!(
        "{rank:>4}  {:<16} {:>3}/{:<3} {:>4}  {:<8} {:>12} {:>8} {:>10}  {}",
        ctx.host(),
        ctx.local_rank(),
        ctx.local_size(),
        ctx.node_index(),
        ctx.device().to_string(),
        sum,
        max,
        v[0],
        if right { "yes" } else { "NO" }
    );
    let lines = comm.allgather_bytes(line.as_bytes())?;
    if rank == 0 {
        println!("gang hello: {n} ranks met at a barrier and allreduced ({})", ctx.backend_description());
        if let (Some(id), Some(dir)) = (ctx.run_id(), ctx.run_dir()) {
            println!("run {id} (attempt {}), records in {}", ctx.attempt(), dir.display());
        }
        println!(
            "{:>4}  {:<16} {:>7} {:>4}  {:<8} {:>12} {:>8} {:>10}  right",
            "rank", "host", "local", "node", "device", "sum(rank)", "max", "count"
        );
        for l in lines.iter() {
            println!("{}", String::from_utf8_lossy(l));
        }
        println!(
            "expected: sum(rank) = {expected_sum}, max = {}, count = {n}: {}",
            n - 1,
            if all_right { "every rank saw the right values" } else { "SOME RANK SAW WRONG VALUES" }
        );
    }
    if !all_right {
        return Err(gang::Error::External("a rank saw wrong collective results".into()));
    }
    Ok(())
}

pub fn selftest(mut config: Config, a: &SelftestArgs) -> Result<()> {
    if let Some(max) = a.max_count {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        if max == 0 || max > gang::comm::MPI_MAX_COUNT {
            return Err(usage(anyhow::anyhow!("--max-count must be between 1 and {}", gang::comm::MPI_MAX_COUNT)));
        }
        config = config.with_max_count(max);
    }
    execute(config, |ctx| {
        let report = gang::internal::selftest::selftest(ctx.comm())?;
        let ok = ctx.comm().allreduce_scalar(true, ReduceOp::And)?;
        if ctx.rank() == 0 && ok {
            println!(
                "selftest passed: {} collectives checked on each of {} ranks ({} backend, at most {} elements per call)",
                report.checks,
                ctx.world(),
                ctx.comm().backend_name(),
                report.max_count
            );
        }
        Ok(())
    })?;
    Ok(())
}

/// Names `--overwrite` in a refusal of the output committer that it would lift.
fn overwrite_hint(e: gang::Error) -> gang::Error {
    if !gang::stage::committer::overwrite_would_help(&e) {
        return e;
    }
    match e {
        gang::Error::Output { path, detail } => {
            gang::Error::Output { path, detail: format!("{detail} (pass --overwrite)") }
        }
        other => other,
    }
}

fn print_report(ctx: &Context, what: &str, r: &StageReport, dir: &Path) {
    if ctx.rank() == 0 && r.already_complete {
        println!(
            "{what}: already complete: {} rows in {} partitions were committed to {} by an earlier run of the same \
             stage; nothing to do",
            r.rows,
            r.partitions,
            dir.display()
        );
    } else if ctx.rank() == 0 {
        println!(
            "{what}: {} rows in {} partitions ({:.1} MB) committed to {} in {:.2} s{}",
            r.rows,
            r.partitions,
            r.bytes as f64 / 1e6,
            dir.display(),
            r.seconds,
            if r.skipped > 0 {
                format!(" ({} partitions already committed by an earlier attempt)", r.skipped)
            } else {
                String::new()
            }
        );
    }
}

pub fn gen(config: Config, a: &GenArgs) -> Result<()> {
    let spec = GenSpec {
        rows: a.rows,
        features: a.features,
        classes: a.classes,
        partitions: a.partitions,
        seed: a.seed,
        noise: a.noise,
    };
    spec.validate().map_err(usage)?;
    let format = format_of(&a.output)?;
    let fingerprint = format!(
        "gen-{:016x}",
        gang::internal::fnv1a64(format!("{}|{format}", serde_json::to_string(&spec)?).as_bytes())
    );
    execute(config, |ctx| {
        let mut out = StageOutput::begin(ctx, "gen", &a.output.output, format, a.output.overwrite, &fingerprint)
            .map_err(overwrite_hint)?;
        let schema = spec.schema();
        for p in (ctx.rank()..spec.partitions).step_by(ctx.world()) {
            if out.skip_if_committed(p) {
                continue;
            }
            let batches = spec.generate(p, a.batch_size.max(1)).map_err(|e| out.fail(e))?;
            out.submit(p, &schema, batches.into_iter().map(Ok))?;
        }
        let report = out.finish(spec.partitions)?;
        if ctx.rank() == 0 {
            let model = serde_json::json!({ "spec": spec, "true_model": spec.true_model() });
            let path = a.output.output.join(format!("{}true_model.json", gang::internal::SIDECAR_PREFIX));
            let bytes = serde_json::to_vec_pretty(&model).map_err(gang::Error::external)?;
            gang_protocol::durable::write_file(&path, &bytes)
                .map_err(|e| gang::Error::io(e.path().to_path_buf(), e.into_io_error()))?;
        }
        print_report(ctx, "gen", &report, &a.output.output);
        Ok(())
    })?;
    Ok(())
}

/// Statistics of the planned input over the whole gang (every rank gets them).
fn dataset_stats(ctx: &Context, plan: &PartitionPlan, options: &PlanOptions) -> gang::Result<TableSummary> {
    dataset_stats_keeping(ctx, plan, &plan.schema, options, None)
}

/// Decoded batches of the statistics pass kept for the map stage that follows, by
/// partition id, with the partition and schema they were read as (the map stage plans
/// again: it takes them only for the same partition and schema).
type Kept = std::collections::HashMap<usize, (gang::data::Partition, arrow_schema::SchemaRef, Vec<RecordBatch>)>;
type KeptBatches = std::sync::Arc<std::sync::Mutex<Kept>>;

/// The bytes this rank's partitions of `plan` take decoded, where every column has a fixed
/// width (`None` otherwise: strings, lists, booleans).
fn decoded_bytes(ctx: &Context, plan: &PartitionPlan) -> Option<u64> {
    let width: usize = plan.schema.fields().iter().map(|f| f.data_type().primitive_width()).sum::<Option<usize>>()?;
    let rows: u64 = plan.for_rank(ctx.rank(), ctx.world()).iter().map(|p| p.rows).sum();
    Some(rows.saturating_mul(width as u64))
}

/// What a rank may keep of its decoded input between two passes: `GANG_KEEP_BYTES` bytes
/// if set (0: nothing), else a quarter of the node's available memory shared by the ranks
/// on the node (nothing where /proc/meminfo cannot be read).
fn keep_budget(ctx: &Context) -> gang::Result<usize> {
    if let Ok(v) = std::env::var("GANG_KEEP_BYTES") {
        return v.trim().parse::<usize>().map_err(|_| {
            gang::Error::InvalidArgument(format!(
                "GANG_KEEP_BYTES={v:?} is not a number of bytes (0 keeps nothing between the passes)"
            ))
        });
    }
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<usize>().ok())
        })
        .unwrap_or(0)
        .saturating_mul(1024);
    Ok(available / 4 / ctx.local_size().max(1))
}

/// [`dataset_stats`] of the columns of `summarized`, reading the columns of `plan`; with
/// `keep`, the decoded batches too, as long as they fit in its budget (past it, none are
/// kept and the next pass reads the input again).
fn dataset_stats_keeping(
    ctx: &Context,
    plan: &PartitionPlan,
    summarized: &arrow_schema::SchemaRef,
    options: &PlanOptions,
    keep: Option<(&KeptBatches, usize)>,
) -> gang::Result<TableSummary> {
    let empty = TableSummary::new(summarized);
    let mine: Vec<_> = plan.for_rank(ctx.rank(), ctx.world()).into_iter().cloned().collect();
    let ids: Vec<usize> = mine.iter().map(|p| p.id).collect();
    let mut summaries: Vec<(usize, TableSummary)> = ids.iter().map(|&id| (id, empty.clone())).collect();
    let stream = Prefetch::new(mine, plan.schema.clone(), options.clone(), PrefetchOptions::default());
    let mut result = Ok(());
    let mut kept: Option<(Kept, usize)> = keep.map(|_| (Kept::new(), 0));
    for item in stream {
        match item {
            Ok((id, batch)) => {
                let slot = summaries.iter_mut().find(|(i, _)| *i == id).expect("a planned partition");
                slot.1.add(&batch)?;
                if let (Some((map, bytes)), Some((_, budget))) = (kept.as_mut(), keep) {
                    *bytes += batch.get_array_memory_size();
                    if *bytes > budget {
                        kept = None;
                    } else {
                        let part = plan.partitions.iter().find(|p| p.id == id).expect("a planned partition");
                        map.entry(id).or_insert_with(|| (part.clone(), plan.schema.clone(), Vec::new())).2.push(batch);
                    }
                }
            }
            Err(e) => {
                result = Err(e.with_rank(ctx.rank()));
                break;
            }
        }
    }
    if let Err(e) = result {
        // Peers are about to wait in the gather below: stop the gang (does not return
        // under MPI).
        ctx.fail_gang("stats", &e);
        return Err(e);
    }
    if let (Some((map, _)), Some((shared, _))) = (kept, keep) {
        *shared.lock().expect("kept batches") = map;
    }
    combine_across_ranks(ctx.comm(), &empty, &summaries)
}

pub fn stats(config: Config, a: &StatsArgs) -> Result<()> {
    let inputs = inputs_of(&a.input)?;
    let options = plan_options(&a.input);
    execute(config, |ctx| {
        let started = Instant::now();
        let plan = PartitionPlan::discover_on_root(ctx.comm(), &inputs, &options)?;
        let stats = dataset_stats(ctx, &plan, &options)?;
        if ctx.rank() == 0 {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&stats.to_json()).map_err(gang::Error::external)?);
            } else {
                print!("{}", stats.to_table());
                println!(
                    "({} partitions over {} ranks, {:.2} s)",
                    plan.partitions.len(),
                    ctx.world(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        Ok(())
    })?;
    Ok(())
}

pub fn standardize(config: Config, a: &StandardizeArgs) -> Result<()> {
    let inputs = inputs_of(&a.input)?;
    let options = plan_options(&a.input);
    let format = format_of(&a.output)?;
    execute(config, |ctx| {
        let started = Instant::now();
        let plan = PartitionPlan::discover_on_root(ctx.comm(), &inputs, &options)?;
        let columns = feature_columns(&plan.schema, &a.keep);
        // The statistics pass reads the feature columns only (issue 10).
        let features: Vec<usize> = columns.iter().filter_map(|c| plan.schema.index_of(c).ok()).collect();
        let projected = PartitionPlan {
            partitions: plan.partitions.clone(),
            schema: std::sync::Arc::new(plan.schema.project(&features)?),
        };
        // When this rank's input fits in its budget decoded, the statistics pass reads every
        // column and keeps the batches for the map stage (one decode in all); otherwise it
        // reads only the feature columns and the map stage reads the input again. Each rank
        // decides alone: the output is the same bytes either way.
        let budget = keep_budget(ctx)? as u64;
        let kept: KeptBatches = Default::default();
        let stats = match decoded_bytes(ctx, &plan) {
            Some(bytes) if budget > 0 && bytes <= budget => {
                dataset_stats_keeping(ctx, &plan, &projected.schema, &options, Some((&kept, budget as usize)))?
            }
            _ => dataset_stats(ctx, &projected, &options)?,
        };
        let reuse = kept.clone();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = served.clone();
        let reader: gang::stage::map::PartitionReader = std::sync::Arc::new(move |p, schema, opts| {
            let batches = {
                let mut kept = reuse.lock().expect("kept batches");
                match kept.get(&p.id) {
                    Some((part, read_as, _)) if part == p && read_as == schema => kept.remove(&p.id).map(|k| k.2),
                    _ => None,
                }
            };
            match batches {
                Some(batches) => {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(Box::new(batches.into_iter().map(Ok)) as gang::data::BatchIter)
                }
                None => gang::data::read_partition(p, schema, opts),
            }
        });
        if ctx.rank() == 0 {
            println!("standardize: {} feature columns ({}), keeping {:?}", columns.len(), columns.join(","), a.keep);
        }
        let report = MapStage::new(ctx, inputs.clone())
            .options(options.clone())
            .output(&a.output.output, format)
            .overwrite(a.output.overwrite)
            .name("standardize")
            .version(&standardize_version(&stats, &columns))
            .reader(reader)
            .run(|batch| standardize_batch(batch, &stats, &columns))
            .map_err(overwrite_hint)?;
        // The job's time is both passes (statistics, then the map stage), as the peers in
        // bench/ measure theirs.
        let report = StageReport { seconds: started.elapsed().as_secs_f64(), ..report };
        print_report(ctx, "standardize", &report, &a.output.output);
        let once = ctx.comm().allreduce_scalar(served.load(std::sync::atomic::Ordering::Relaxed), ReduceOp::Sum)?;
        if ctx.rank() == 0 && !report.already_complete {
            let mapped = (report.partitions - report.skipped) as u64;
            if once == mapped {
                println!("standardize: every partition decoded once (the statistics pass kept them for the map stage)");
            } else {
                println!(
                    "standardize: {once} of {mapped} partitions decoded once; the others were read again (their \
                     rank's input did not fit its budget for keeping them: GANG_KEEP_BYTES, see --help)"
                );
            }
        }
        Ok(())
    })?;
    Ok(())
}

pub fn convert(config: Config, a: &ConvertArgs) -> Result<()> {
    if a.partitions == 0 {
        return Err(usage(anyhow::anyhow!("--partitions must be at least 1")));
    }
    let inputs = inputs_of(&a.input)?;
    let options = plan_options(&a.input);
    let format = format_of(&a.output)?;
    execute(config, |ctx| {
        let plan = PartitionPlan::discover_on_root(ctx.comm(), &inputs, &options)?;
        let total = plan.total_rows();
        let k = a.partitions as u64;
        if k > total.max(1) {
            return Err(gang::Error::InvalidArgument(format!("--partitions {k} exceeds the {total} input rows")));
        }
        // Every option that shapes the output: the plan and format are hashed, the rest is
        // the version.
        let version = format!("k{k}-read_batch{}", options.batch_size());
        let fingerprint = gang::stage::map::versioned_fingerprint("convert", &version, &plan, format);
        let mut out = StageOutput::begin(ctx, "convert", &a.output.output, format, a.output.overwrite, &fingerprint)
            .map_err(overwrite_hint)?;
        // Global row offset of every input partition, in plan order.
        let mut starts = Vec::with_capacity(plan.partitions.len());
        let mut acc = 0u64;
        for p in &plan.partitions {
            starts.push(acc);
            acc += p.rows;
        }
        for part in (ctx.rank()..a.partitions).step_by(ctx.world()) {
            if out.skip_if_committed(part) {
                continue;
            }
            let (lo, hi) = (total * part as u64 / k, total * (part as u64 + 1) / k);
            let batches = rows_of(&plan, &starts, &options, lo, hi).map_err(|e| out.fail(e.with_rank(ctx.rank())))?;
            out.submit(part, &plan.schema, batches.into_iter().map(Ok))?;
        }
        let report = out.finish(a.partitions)?;
        print_report(ctx, "convert", &report, &a.output.output);
        Ok(())
    })
    .context("convert")?;
    Ok(())
}

/// Global rows `lo..hi` of the planned input, as batches.
fn rows_of(
    plan: &PartitionPlan,
    starts: &[u64],
    options: &PlanOptions,
    lo: u64,
    hi: u64,
) -> gang::Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for (p, &start) in plan.partitions.iter().zip(starts) {
        let end = start + p.rows;
        if end <= lo || start >= hi {
            continue;
        }
        let mut row = start;
        for b in gang::data::read_partition(p, &plan.schema, options)? {
            let b = b?;
            let (b_lo, b_hi) = (row, row + b.num_rows() as u64);
            row = b_hi;
            let (s, e) = (b_lo.max(lo), b_hi.min(hi));
            if s < e {
                out.push(b.slice((s - b_lo) as usize, (e - s) as usize));
            }
        }
    }
    Ok(out)
}

pub fn train(config: Config, a: &TrainArgs) -> Result<()> {
    use gang::train::{self, data, model_file, CheckpointConfig, TrainConfig};
    use gang_kernels::Optimizer;
    let inputs = inputs_of(&a.input)?;
    let options = plan_options(&a.input);
    let optimizer = match a.optimizer.as_str() {
        "sgd" => Optimizer::Sgd { lr: a.lr, momentum: a.momentum, weight_decay: a.weight_decay },
        "adam" => match Optimizer::adam(a.lr) {
            Optimizer::Adam { beta1, beta2, eps, .. } => {
                Optimizer::Adam { lr: a.lr, beta1, beta2, eps, weight_decay: a.weight_decay }
            }
            other => other,
        },
        other => return Err(usage(anyhow::anyhow!("--optimizer {other}: expected sgd or adam"))),
    };
    if a.checkpoint_every == 0 {
        return Err(usage(anyhow::anyhow!("--checkpoint-every must be at least 1")));
    }
    execute(config, |ctx| {
        let started = Instant::now();
        let plan = PartitionPlan::discover_on_root(ctx.comm(), &inputs, &options)?;
        let features = data::feature_columns(&plan.schema, &a.label, a.features.as_deref())?;
        let (mut shard, classes) = data::load_shard(ctx, &plan, &options, &a.label, &features)?;
        shard.shuffle_rows(a.seed);
        let kind = train::parse_model(&a.model, classes)?;
        let rows = ctx.comm().allreduce_scalar(shard.rows as u64, ReduceOp::Sum)?;
        if ctx.rank() == 0 {
            println!(
                "train {kind}: {rows} rows x {} features, label {} ({}), {} ranks, batch {}, {} lr {}, kernels {} \
                 (attempt {})",
                features.len(),
                a.label,
                if classes > 0 { format!("{classes} classes") } else { "real-valued".to_string() },
                ctx.world(),
                a.batch_size,
                optimizer.name(),
                a.lr,
                gang_kernels::Kernels::active(),
                ctx.attempt()
            );
        }
        let mut cfg = TrainConfig::try_new(kind, a.epochs, a.batch_size)?
            .with_optimizer(optimizer)?
            .with_seed(a.seed)
            .with_shuffle_block(a.shuffle_block)
            .with_device(a.device.parse()?)
            .with_device_comm(a.device_comm.parse().map_err(gang::Error::InvalidArgument)?)
            .with_gpu_sharing(a.allow_gpu_sharing);
        if let Some(d) = &a.checkpoint_dir {
            cfg = cfg.with_checkpoint(CheckpointConfig::try_new(d, a.checkpoint_every, a.keep)?);
        }
        let classification = classes > 0;
        let report = train::train(ctx, &shard, &cfg, |e| {
            if ctx.rank() == 0 {
                let acc = if classification { format!("  accuracy {:.4}", e.accuracy) } else { String::new() };
                println!(
                    "epoch {:>3}/{}: loss {:.5}{acc}  ({:.2} s, allreduce {:.0}%)",
                    e.epoch,
                    a.epochs,
                    e.loss,
                    e.seconds,
                    100.0 * e.allreduce_seconds / e.seconds.max(1e-9)
                );
            }
        })?;
        let f = &report.final_stats;
        if ctx.rank() == 0 {
            let mut meta = std::collections::BTreeMap::new();
            meta.insert("final_loss".to_string(), f.mean_loss().to_string());
            meta.insert("final_accuracy".to_string(), f.accuracy().to_string());
            meta.insert("epochs".to_string(), a.epochs.to_string());
            meta.insert("steps".to_string(), report.steps.to_string());
            let info = model_file::ModelInfo {
                spec: a.model.clone(),
                classes,
                features: features.clone(),
                label: a.label.clone(),
                metadata: meta,
            };
            model_file::save(&a.output, &report.model, &info)?;
            let curve = a.curve.clone().unwrap_or_else(|| a.output.with_extension("svg"));
            let title = format!("gang train {} on {} rows, {} ranks", a.model, rows, ctx.world());
            let svg = train::svg::loss_curve(&title, &report.epochs, classification);
            gang_protocol::durable::write_file(&curve, svg.as_bytes())
                .map_err(|e| gang::Error::io(e.path().to_path_buf(), e.into_io_error()))?;
            println!(
                "final: loss {:.6}{} over all {} rows; {} steps{}; model {} ({} parameters), curve {} ({:.2} s)",
                f.mean_loss(),
                if classification { format!(", accuracy {:.4}", f.accuracy()) } else { String::new() },
                f.n,
                report.steps,
                report.resumed_from.map(|s| format!(" (resumed from the checkpoint of step {s})")).unwrap_or_default(),
                a.output.display(),
                report.model.num_params(),
                curve.display(),
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    })?;
    Ok(())
}

pub fn predict(config: Config, a: &PredictArgs) -> Result<()> {
    use arrow_array::{ArrayRef, Float32Array, Int64Array};
    use arrow_schema::{DataType, Field, Schema};
    use gang::train::{data, model_file};
    use gang_kernels::Output;
    use std::sync::Arc;
    let inputs = inputs_of(&a.input)?;
    let options = plan_options(&a.input);
    let format = format_of(&a.output)?;
    execute(config, |ctx| {
        // Loaded once per rank, before the stage.
        let (model, info) = model_file::load(&a.model)?;
        // The model file's content: weights, features, classes, everything it was loaded from.
        let version = model_file::version(&a.model)?;
        let report = MapStage::new(ctx, inputs.clone())
            .options(options.clone())
            .output(&a.output.output, format)
            .overwrite(a.output.overwrite)
            .name("predict")
            .version(&version)
            .run(|batch| {
                let x = data::matrix(&batch, &info.features)?;
                let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
                let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
                let err = |e| gang::Error::External(Box::new(e));
                match model.output() {
                    Output::Regression => {
                        fields.push(Field::new("prediction", DataType::Float32, false));
                        columns.push(Arc::new(Float32Array::from(model.predict(&x).map_err(err)?)));
                    }
                    Output::Binary => {
                        let p = model.predict(&x).map_err(err)?;
                        let c: Vec<i64> = p.iter().map(|&v| i64::from(v >= 0.5)).collect();
                        fields.push(Field::new("probability", DataType::Float32, false));
                        fields.push(Field::new("prediction", DataType::Int64, false));
                        columns.push(Arc::new(Float32Array::from(p)));
                        columns.push(Arc::new(Int64Array::from(c)));
                    }
                    Output::Softmax { classes } => {
                        let p = model.predict(&x).map_err(err)?;
                        let c = model.predict_class(&x).map_err(err)?;
                        let best: Vec<f32> = p.chunks(*classes).zip(&c).map(|(row, &k)| row[k as usize]).collect();
                        fields.push(Field::new("probability", DataType::Float32, false));
                        fields.push(Field::new("prediction", DataType::Int64, false));
                        columns.push(Arc::new(Float32Array::from(best)));
                        columns.push(Arc::new(Int64Array::from(c)));
                    }
                }
                Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
            })
            .map_err(overwrite_hint)?;
        print_report(ctx, "predict", &report, &a.output.output);
        Ok(())
    })?;
    Ok(())
}

/// `gang ckpt ...`.
#[derive(Debug, clap::Subcommand)]
pub enum CkptCommand {
    /// List the checkpoints of DIR: step, complete or not (and why), world size, size.
    Ls {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify every checkpoint of DIR (manifests, sizes, checksums) and say where a restore
    /// would start; exits 1 when the newest checkpoint is damaged.
    Verify {
        /// The checkpoint directory.
        dir: PathBuf,
    },
}

pub fn ckpt(c: &CkptCommand) -> Result<()> {
    match c {
        CkptCommand::Ls { dir, json } => {
            let list = gang::checkpoint::list(dir)?;
            if *json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "name": c.name, "step": c.step, "complete": c.complete, "latest": c.latest,
                            "world_size": c.world_size, "bytes": c.bytes, "why_incomplete": c.why_incomplete,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if list.is_empty() {
                println!("no checkpoints in {}", dir.display());
                return Ok(());
            }
            println!("{:<20} {:>10} {:<10} {:>6} {:>12}  note", "checkpoint", "step", "state", "ranks", "bytes");
            for c in &list {
                println!(
                    "{:<20} {:>10} {:<10} {:>6} {:>12}  {}{}",
                    c.name,
                    c.step,
                    if c.complete { "complete" } else { "INCOMPLETE" },
                    c.world_size.map(|w| w.to_string()).unwrap_or_else(|| "-".into()),
                    c.bytes,
                    if c.latest { "LATEST " } else { "" },
                    c.why_incomplete.clone().unwrap_or_default()
                );
            }
            Ok(())
        }
        CkptCommand::Verify { dir } => {
            let report = gang::checkpoint::verify(dir)?;
            println!("{report}");
            if !report.is_ok() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
