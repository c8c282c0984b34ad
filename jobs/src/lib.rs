//! The built-in jobs of gang and their options, defined once.
//!
//! The `gang` launcher reads these definitions to show `gang train --help`, to refuse a bad
//! or missing option (or an input that does not exist) before any rank starts, and to pass
//! the job's options on to the ranks; `gang-rank`, the rank-side program, parses the same
//! definitions and runs the job. This crate links neither MPI nor the `gang` library.
//!
//! ```
//! use clap::{FromArgMatches, Subcommand};
//! use gang_jobs::Job;
//!
//! let cmd = Job::augment_subcommands(clap::Command::new("gang"));
//! let m = cmd.try_get_matches_from(["gang", "convert", "--input", "data/", "--output", "out/", "--partitions", "2"]).unwrap();
//! let job = Job::from_arg_matches(&m).unwrap();
//! assert_eq!(job.name(), "convert");
//! assert_eq!(job.inputs(), [std::path::PathBuf::from("data/")]);
//! // What the ranks are given: the options set on the command line, nothing defaulted.
//! let (_, sub) = m.subcommand().unwrap();
//! assert_eq!(gang_jobs::rank_args("convert", sub).unwrap(), ["--input=data/", "--output=out/", "--partitions=2"]);
//! ```
//!
//! Adding a job is a variant of [`Job`] with its options struct here, and its rank-side
//! function in `gang-rank` (whose `match` over [`Job`] does not compile without it).
#![forbid(unsafe_code)]

use clap::{ArgAction, Args, Subcommand};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A built-in job: `gang <name> [LAUNCH OPTIONS] [JOB OPTIONS]` runs `gang-rank <name> [JOB
/// OPTIONS]` in every rank.
///
/// Not `#[non_exhaustive]` on purpose: `gang-rank` matches it exhaustively, so a job added
/// here without its rank-side function does not compile.
#[derive(Debug, Clone, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per command; boxing would only add noise
pub enum Job {
    /// Every rank says hello (rank, host, device): a check of the whole stack.
    Hello(HelloArgs),
    /// Checks every collective on every rank.
    Selftest(SelftestArgs),
    /// A synthetic classification or regression dataset with a known true model.
    Gen(GenArgs),
    /// Count, mean, std, min, max and nulls of every numeric column.
    Stats(StatsArgs),
    /// Standardize the feature columns with the dataset's statistics (a map stage).
    ///
    /// The statistics pass keeps the batches it decoded for the map stage when they fit in
    /// memory (per rank, a quarter of the node's available memory shared by its ranks; the
    /// environment variable GANG_KEEP_BYTES sets the budget in bytes, 0 keeps nothing);
    /// otherwise the map stage reads the input again. The output is the same either way;
    /// a line says how many partitions were decoded once.
    Standardize(StandardizeArgs),
    /// Convert between Parquet, Arrow IPC and HDF5, re-partitioned into K files.
    Convert(ConvertArgs),
    /// Data-parallel training with allreduce, checkpoints and resume.
    Train(TrainArgs),
    /// Apply a trained model to a dataset (a map stage, exactly-once output).
    Predict(PredictArgs),
}

impl Job {
    /// The job's name: its subcommand, and the first argument of `gang-rank`.
    pub fn name(&self) -> &'static str {
        match self {
            Job::Hello(_) => "hello",
            Job::Selftest(_) => "selftest",
            Job::Gen(_) => "gen",
            Job::Stats(_) => "stats",
            Job::Standardize(_) => "standardize",
            Job::Convert(_) => "convert",
            Job::Train(_) => "train",
            Job::Predict(_) => "predict",
        }
    }

    /// Whether the job computes on GPUs (then `-n` defaults to one rank per visible GPU):
    /// `train` unless `--device cpu`.
    pub fn uses_gpus(&self) -> bool {
        matches!(self, Job::Train(a) if a.device == "auto" || a.device == "cuda")
    }

    /// The files and directories the job reads, as given (`--input` specs with an HDF5
    /// dataset list reduced to the file; the model of `predict`).
    pub fn inputs(&self) -> Vec<PathBuf> {
        let specs = |i: &InputArgs| i.inputs.iter().map(|s| input_path(s)).collect::<Vec<_>>();
        match self {
            Job::Hello(_) | Job::Selftest(_) | Job::Gen(_) => Vec::new(),
            Job::Stats(a) => specs(&a.input),
            Job::Standardize(a) => specs(&a.input),
            Job::Convert(a) => specs(&a.input),
            Job::Train(a) => specs(&a.input),
            Job::Predict(a) => {
                let mut v = specs(&a.input);
                v.push(a.model.clone());
                v
            }
        }
    }

    /// Checks what can be checked before any rank starts: that every input exists
    /// (relative paths from `cwd`, where the ranks start too) and the options that depend on
    /// each other. Option values on their own are checked when they are parsed.
    ///
    /// # Errors
    /// The first problem: [`JobError::MissingInput`] or [`JobError::Conflict`], worded for
    /// the command line (they name the option).
    pub fn validate(&self, cwd: &Path) -> Result<(), JobError> {
        for p in self.inputs() {
            if !cwd.join(&p).exists() {
                let option = match self {
                    Job::Predict(a) if a.model == p => "--model",
                    _ => "--input",
                };
                return Err(JobError::MissingInput { option, path: p });
            }
        }
        if let Job::Gen(a) = self {
            if a.partitions as u64 > a.rows {
                return Err(JobError::Conflict(format!("--partitions {} exceeds --rows {}", a.partitions, a.rows)));
            }
            if a.classes > 0 && a.noise > 1.0 {
                return Err(JobError::Conflict(format!(
                    "--noise {}: for classification it is a probability (at most 1)",
                    a.noise
                )));
            }
        }
        Ok(())
    }
}

/// What is wrong with a job's command line beyond what parsing it finds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobError {
    /// A file or directory the job reads does not exist.
    MissingInput {
        /// The option that names it (`--input`, `--model`).
        option: &'static str,
        /// The path as given.
        path: PathBuf,
    },
    /// Options that do not fit together.
    Conflict(String),
    /// Not the name of a built-in job.
    UnknownJob(String),
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::MissingInput { option, path } => {
                write!(f, "{option} {}: no such file or directory", path.display())
            }
            JobError::Conflict(m) => f.write_str(m),
            JobError::UnknownJob(name) => write!(f, "{name} is not a built-in job"),
        }
    }
}

impl std::error::Error for JobError {}

/// The names of every built-in job, in the order `gang --help` lists them.
pub fn names() -> Vec<String> {
    Job::augment_subcommands(clap::Command::new("gang")).get_subcommands().map(|s| s.get_name().to_string()).collect()
}

/// The job's options set in `matches` (from the command line or the environment, not
/// defaults), as `gang-rank <job>` arguments: `--name=value` per value, `--flag` per flag.
/// Other arguments in `matches` (the launcher's own) are left out.
///
/// # Errors
/// [`JobError::UnknownJob`]: `job` is not a built-in job.
pub fn rank_args(job: &str, matches: &clap::ArgMatches) -> Result<Vec<OsString>, JobError> {
    let cmd = Job::augment_subcommands(clap::Command::new("gang"));
    let sub = cmd.find_subcommand(job).ok_or_else(|| JobError::UnknownJob(job.to_string()))?;
    let mut out = Vec::new();
    for arg in sub.get_arguments() {
        let id = arg.get_id().as_str();
        let given = matches.try_contains_id(id).unwrap_or(false)
            && matches!(
                matches.value_source(id),
                Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
            );
        if !given {
            continue;
        }
        // Every job option has a long name (`definitions_are_consistent` checks).
        let Some(long) = arg.get_long() else { continue };
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            if matches.get_flag(id) {
                out.push(format!("--{long}").into());
            }
            continue;
        }
        for v in matches.get_raw(id).into_iter().flatten() {
            let mut a = OsString::from(format!("--{long}="));
            a.push(v);
            out.push(a);
        }
    }
    Ok(out)
}

/// The file an `--input` spec names: an HDF5 `file.h5:ds1,ds2` spec names `file.h5`.
fn input_path(spec: &str) -> PathBuf {
    let spec = spec.trim();
    if let Some((file, _)) = spec.rsplit_once(':') {
        let lower = file.to_ascii_lowercase();
        if lower.ends_with(".h5") || lower.ends_with(".hdf5") {
            return PathBuf::from(file);
        }
    }
    PathBuf::from(spec)
}

/// Options of `hello`: none.
#[derive(Debug, Clone, Args)]
pub struct HelloArgs {}

/// Options of `selftest`.
#[derive(Debug, Clone, Args)]
pub struct SelftestArgs {
    /// Split every collective into calls of at most this many elements.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=i32::MAX as u64))]
    pub max_count: Option<u64>,
}

/// Where the input is and how to cut it.
#[derive(Debug, Clone, Args)]
pub struct InputArgs {
    /// Input: a Parquet file or directory (Hive `key=value/` layouts included), an Arrow IPC
    /// file (.arrow/.ipc/.feather), or an HDF5 file with datasets (`file.h5:ds1,ds2`; all
    /// numeric root datasets when none are named). Repeatable.
    #[arg(long = "input", required = true, value_name = "SPEC")]
    pub inputs: Vec<String>,
    /// Read only these columns (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "A,B,...")]
    pub columns: Option<Vec<String>>,
    /// Rows per batch read.
    #[arg(long, default_value_t = 65536, value_parser = positive_u64)]
    pub read_batch: u64,
    /// Rows per partition (about: a row group is cut into row ranges only when the ranks need it).
    #[arg(long, default_value_t = 1 << 20, value_parser = positive_u64)]
    pub partition_rows: u64,
}

/// Where and how to write.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Output directory (committed exactly once: complete with `_SUCCESS`, or absent).
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// Output format: parquet (snappy), parquet:zstd[:LEVEL], parquet:none, ipc, ipc:zstd,
    /// hdf5.
    #[arg(long, default_value = "parquet", value_parser = output_format)]
    pub format: String,
    /// Replace a committed result in the output directory.
    #[arg(long)]
    pub overwrite: bool,
}

/// Checks the spelling of an output format (the rank side turns it into the library's
/// format and is the final judge).
fn output_format(s: &str) -> Result<String, String> {
    let lower = s.trim().to_ascii_lowercase();
    let parts: Vec<&str> = lower.split(':').collect();
    let ok = match parts.as_slice() {
        ["parquet"] | ["parquet", "zstd" | "snappy" | "none" | "uncompressed"] => true,
        ["parquet", "zstd", level] => level.parse::<i32>().is_ok_and(|l| (1..=22).contains(&l)),
        ["ipc" | "arrow"] | ["ipc" | "arrow", "zstd"] | ["hdf5" | "h5"] => true,
        _ => false,
    };
    if ok {
        Ok(s.to_string())
    } else {
        Err("use parquet, parquet:zstd[:LEVEL 1-22], parquet:snappy, parquet:none, ipc, ipc:zstd or hdf5".into())
    }
}

/// Options of `gen`.
#[derive(Debug, Clone, Args)]
pub struct GenArgs {
    /// Where and how to write.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Total rows.
    #[arg(long, default_value_t = 1_000_000, value_parser = positive_u64)]
    pub rows: u64,
    /// Feature columns (f0 .. f{k-1}, float32).
    #[arg(long, default_value_t = 32, value_parser = positive)]
    pub features: usize,
    /// Classes of the label y; 0 makes a regression target (1 is refused).
    #[arg(long, default_value_t = 2, value_parser = classes)]
    pub classes: usize,
    /// Output files.
    #[arg(long, default_value_t = 8, value_parser = positive)]
    pub partitions: usize,
    /// Seed of everything.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Label noise: probability of a random class, or the noise's standard deviation.
    #[arg(long, default_value_t = 0.05, value_parser = non_negative)]
    pub noise: f64,
    /// Rows per batch (Parquet row group size).
    #[arg(long, default_value_t = 65536, value_parser = positive)]
    pub batch_size: usize,
}

/// A whole number of at least 1.
fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err("expected a whole number of at least 1".into()),
    }
}

/// A whole number of at least 1.
fn positive_u64(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err("expected a whole number of at least 1".into()),
    }
}

/// 0 (regression) or at least 2.
fn classes(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v) if v != 1 => Ok(v),
        _ => Err("expected 0 (regression) or at least 2 classes".into()),
    }
}

/// A finite number >= 0.
fn non_negative(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err("expected a finite number >= 0".into()),
    }
}

/// A finite number.
fn finite(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err("expected a finite number".into()),
    }
}

/// Options of `stats`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// Where the input is and how to cut it.
    #[command(flatten)]
    pub input: InputArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `standardize`.
#[derive(Debug, Clone, Args)]
pub struct StandardizeArgs {
    /// Where the input is and how to cut it.
    #[command(flatten)]
    pub input: InputArgs,
    /// Where and how to write.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Float columns to leave as they are (labels).
    #[arg(long, value_delimiter = ',', default_value = "y")]
    pub keep: Vec<String>,
}

/// Options of `train`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Where the input is and how to cut it.
    #[command(flatten)]
    pub input: InputArgs,
    /// The label column: integers 0..k (classification) or floats (regression).
    #[arg(long)]
    pub label: String,
    /// Feature columns (default: every numeric column but the label and `id`).
    #[arg(long, value_delimiter = ',', value_name = "A,B,...")]
    pub features: Option<Vec<String>>,
    /// logistic, softmax, linear, mlp:H or mlp:H1,H2 (ReLU hidden layers).
    #[arg(long, default_value = "logistic", value_parser = model_spec)]
    pub model: String,
    /// Passes over the data.
    #[arg(long, default_value_t = 10)]
    pub epochs: u64,
    /// Rows per step over the whole gang.
    #[arg(long, default_value_t = 1024, value_parser = positive)]
    pub batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 0.01, value_parser = finite)]
    pub lr: f32,
    /// The optimizer.
    #[arg(long, default_value = "adam", value_parser = ["sgd", "adam"])]
    pub optimizer: String,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9, value_parser = finite)]
    pub momentum: f32,
    /// Weight decay (L2 for SGD, decoupled for Adam).
    #[arg(long, default_value_t = 0.0, value_parser = finite)]
    pub weight_decay: f32,
    /// Seed of the initial weights and the shuffles.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Rows kept together when an epoch is shuffled (the rows are shuffled once after
    /// loading); 0: 128 KiB of rows; 1 reshuffles single rows every epoch, at a cost in
    /// speed.
    #[arg(long, default_value_t = 0, value_name = "ROWS")]
    pub shuffle_block: usize,
    /// Checkpoint directory (training resumes from its newest complete checkpoint).
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Checkpoint every this many steps (at least 1).
    #[arg(long, default_value_t = 100, value_parser = positive_u64)]
    pub checkpoint_every: u64,
    /// Complete checkpoints to keep.
    #[arg(long, default_value_t = 3, value_parser = positive)]
    pub keep: usize,
    /// Where to write the model (safetensors).
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// Where to write the loss curve (default: the model's path with .svg).
    #[arg(long, value_name = "FILE")]
    pub curve: Option<PathBuf>,
    /// Where the kernels run: auto (every rank's GPU when every rank has one, else the
    /// CPU; rank 0 says which), cpu, cuda (a GPU per rank, or an error naming what is
    /// missing: the driver, a visible device), or cuda-host (gang's CUDA kernels compiled
    /// for the CPU, through the GPU code path: a check of that path without a GPU; slow).
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda", "cuda-host"])]
    pub device: String,
    /// How the gradients of GPU ranks are summed: auto (NCCL when every rank loads it and
    /// no two ranks share a GPU, else host memory and MPI; rank 0 says which), nccl, or
    /// host.
    #[arg(long, default_value = "auto", value_parser = ["auto", "nccl", "host"])]
    pub device_comm: String,
    /// Let several ranks of a node train on one GPU (refused by default: gang fails at
    /// once with a table of the plan, because it is almost always a binding mistake).
    #[arg(long)]
    pub allow_gpu_sharing: bool,
}

/// Checks the spelling of a model (whether it fits the label is known only once the data
/// is read).
fn model_spec(s: &str) -> Result<String, String> {
    let ok = match s {
        "linear" | "logistic" | "softmax" => true,
        _ => s.strip_prefix("mlp:").is_some_and(|sizes| {
            let hidden: Vec<&str> = sizes.split(',').collect();
            (1..=2).contains(&hidden.len()) && hidden.iter().all(|h| h.trim().parse::<usize>().is_ok_and(|n| n > 0))
        }),
    };
    if ok {
        Ok(s.to_string())
    } else {
        Err("expected linear, logistic, softmax, mlp:H or mlp:H1,H2 (positive hidden sizes)".into())
    }
}

/// Options of `predict`.
#[derive(Debug, Clone, Args)]
pub struct PredictArgs {
    /// Where the input is and how to cut it.
    #[command(flatten)]
    pub input: InputArgs,
    /// Where and how to write.
    #[command(flatten)]
    pub output: OutputArgs,
    /// The model written by `gang train`.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
}

/// Options of `convert`.
#[derive(Debug, Clone, Args)]
pub struct ConvertArgs {
    /// Where the input is and how to cut it.
    #[command(flatten)]
    pub input: InputArgs,
    /// Where and how to write.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Number of output files (rows split evenly, input order kept).
    #[arg(long, value_name = "K", value_parser = positive)]
    pub partitions: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches;

    fn parse(args: &[&str]) -> Result<(Job, Vec<OsString>), String> {
        let cmd = Job::augment_subcommands(clap::Command::new("gang"));
        let m =
            cmd.try_get_matches_from(std::iter::once("gang").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        let job = Job::from_arg_matches(&m).map_err(|e| e.to_string())?;
        let (name, sub) = m.subcommand().unwrap();
        Ok((job, rank_args(name, sub).map_err(|e| e.to_string())?))
    }

    #[test]
    fn definitions_are_consistent() {
        let cmd = Job::augment_subcommands(clap::Command::new("gang"));
        cmd.clone().debug_assert();
        for job in cmd.get_subcommands() {
            for arg in job.get_arguments() {
                assert!(
                    arg.get_long().is_some(),
                    "{} --{}: every option needs a long name",
                    job.get_name(),
                    arg.get_id()
                );
            }
        }
        assert_eq!(names(), ["hello", "selftest", "gen", "stats", "standardize", "convert", "train", "predict"]);
    }

    #[test]
    fn every_name_round_trips() {
        for name in names() {
            let cmd = Job::augment_subcommands(clap::Command::new("gang"));
            let sub = cmd.find_subcommand(&name).unwrap();
            // The required options, with a value each.
            let mut args = vec![name.clone()];
            for a in sub.get_arguments().filter(|a| a.is_required_set()) {
                args.push(format!("--{}", a.get_long().unwrap()));
                args.push("1".into());
            }
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let (job, _) = parse(&refs).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(job.name(), name);
        }
    }

    #[test]
    fn only_given_options_are_passed_on() {
        let (_, args) =
            parse(&["train", "--input", "d", "--label", "y", "--columns", "a,b", "--output", "m", "--epochs", "3"])
                .unwrap();
        assert_eq!(args, ["--input=d", "--columns=a", "--columns=b", "--label=y", "--epochs=3", "--output=m"]);
        let (_, args) = parse(&["stats", "--input", "a", "--input", "b", "--json"]).unwrap();
        assert_eq!(args, ["--input=a", "--input=b", "--json"]);
        // What is passed on parses to the same job.
        let rank: Vec<String> =
            std::iter::once("stats".to_string()).chain(args.iter().map(|a| a.to_string_lossy().into_owned())).collect();
        let (job, again) = parse(&rank.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        assert_eq!(again, args);
        assert!(matches!(job, Job::Stats(StatsArgs { json: true, .. })));
    }

    #[test]
    fn bad_values_are_refused_when_parsed() {
        let train = ["train", "--input", "d", "--label", "y", "--output", "m"];
        let with = |extra: &[&str]| {
            let mut v = train.to_vec();
            v.extend_from_slice(extra);
            parse(&v).err().unwrap_or_default()
        };
        assert!(
            with(&["--checkpoint-every", "0"]).contains("--checkpoint-every"),
            "{}",
            with(&["--checkpoint-every", "0"])
        );
        assert!(with(&["--optimizer", "rmsprop"]).contains("possible values: sgd, adam"));
        assert!(with(&["--model", "mlp:0"]).contains("expected linear, logistic"));
        assert!(with(&["--no-such-option"]).contains("unexpected argument '--no-such-option'"));
        assert!(with(&[]).is_empty());
        assert!(parse(&["train", "--input", "d"]).unwrap_err().contains("--label"));
        assert!(parse(&["convert", "--input", "d", "--output", "o", "--partitions", "2", "--format", "csv"])
            .unwrap_err()
            .contains("use parquet"));
        assert!(parse(&["gen", "--output", "o", "--classes", "1"]).unwrap_err().contains("at least 2 classes"));
        assert!(parse(&["selftest", "--max-count", "0"]).is_err());
    }

    #[test]
    fn inputs_must_exist() {
        let dir = std::env::temp_dir().join(format!("gang-jobs-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("f.h5"), b"").unwrap();
        let (job, _) = parse(&["stats", "--input", "data", "--input", "f.h5:x,y"]).unwrap();
        assert_eq!(job.inputs(), [PathBuf::from("data"), PathBuf::from("f.h5")]);
        assert_eq!(job.validate(&dir), Ok(()));
        let (job, _) = parse(&["stats", "--input", "data", "--input", "missing.parquet"]).unwrap();
        assert_eq!(job.validate(&dir).unwrap_err().to_string(), "--input missing.parquet: no such file or directory");
        let (job, _) = parse(&["predict", "--input", "data", "--output", "o", "--model", "m.safetensors"]).unwrap();
        assert_eq!(
            job.validate(&dir).unwrap_err(),
            JobError::MissingInput { option: "--model", path: "m.safetensors".into() }
        );
        let (job, _) = parse(&["gen", "--output", "o", "--rows", "4", "--partitions", "8"]).unwrap();
        assert!(job.validate(&dir).unwrap_err().to_string().contains("exceeds --rows 4"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
