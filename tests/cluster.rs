//! gang on a cluster: real Slurm daemons (slurmctld, one slurmd per node) and two nodes,
//! each a network and UTS namespace of this machine with its own host name and address on
//! a bridge, started by `./dev cluster up` (tools/cluster.sh). Open MPI reaches the nodes
//! through the cluster's rsh agent, as it would through ssh; srun through the slurmd.
//!
//! What is checked, against real processes: a batch job written by `gang sbatch` runs; a
//! gang of 4 ranks over 2 nodes (srun, mpirun with a hostfile) reports two hosts and passes
//! `gang selftest`; a task killed part-way is restarted inside the allocation and training
//! ends with the model of an uninterrupted run; a rank SIGSTOPped on the second node is
//! found by its missing heartbeats (TCP, across nodes) and the gang restarted; `scancel`
//! ends the job with no rank process left; map-stage output written from two nodes is the
//! output of a one-node run. Every launch has a timeout ([`common::HANG_GUARD`]).

mod common;

use common::{assert_success, gang_bin, text, wait_guarded, Scratch};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The cluster's environment (`SLURM_CONF`, the rsh agent, the hostfile, ...), read from
/// the file `./dev cluster up` writes.
struct Cluster {
    env: Vec<(String, String)>,
}

/// One test at a time on the cluster: its two nodes have the CPUs of this machine, and
/// allocations of parallel tests would queue behind each other anyway.
static CLUSTER_LOCK: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Starts the cluster (idempotent: `up` returns at once when it is already up) and holds
/// it for one test.
fn cluster() -> (&'static Cluster, MutexGuard<'static, ()>) {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    let guard = CLUSTER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let c = CLUSTER.get_or_init(|| {
        let dev = repo().join("dev");
        let out = Command::new(&dev)
            .args(["cluster", "up", "--nodes", "2", "--gpus", "2"])
            .stdin(Stdio::null())
            .output()
            .expect("run ./dev cluster up");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "./dev cluster up failed:\n{stdout}\n{stderr}");
        let dir = std::env::var("GANG_CLUSTER_DIR").unwrap_or_else(|_| "/tmp/gang-cluster".into());
        let file = Path::new(&dir).join("env");
        let dump = Command::new("bash")
            .arg("-c")
            .arg("set -a; source \"$1\"; env -0")
            .arg("bash")
            .arg(&file)
            .output()
            .expect("read the cluster's env file");
        assert!(dump.status.success(), "could not source {}", file.display());
        let env = dump
            .stdout
            .split(|&b| b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                let (k, v) = kv.split_once('=')?;
                (k.starts_with("GANG_CLUSTER")
                    || k.starts_with("SLURM_CONF")
                    || k.starts_with("OMPI_MCA")
                    || k.starts_with("HYDRA_"))
                .then(|| (k.to_string(), v.to_string()))
            })
            .collect();
        Cluster { env }
    });
    (c, guard)
}

impl Cluster {
    fn var(&self, k: &str) -> &str {
        self.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("{k} not in env"))
    }

    /// `program` with the cluster's environment, run directories under `runs`.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>, runs: &Path) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("GANG_RUN_ROOT", runs)
            .env_remove("GANG_FAULT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// `salloc -N2 -n4 -O gang ARGS`: gang inside a two-node allocation (it launches with
    /// srun).
    fn salloc_gang(&self, args: &[&str], runs: &Path, env: &[(&str, &str)]) -> Output {
        let mut c = self.command("salloc", runs);
        c.args(["-N2", "-n4", "-O", "--quiet"]).arg(gang_bin()).args(args).envs(env.iter().copied());
        wait_guarded(c.spawn().expect("salloc"), &format!("salloc gang {args:?}"))
    }

    /// The cluster's hostfile in the format of the tests' MPI (Open MPI's or hydra's).
    fn hostfile(&self) -> &str {
        self.var(if common::mpi_is_mpich() { "GANG_CLUSTER_HOSTFILE_MPICH" } else { "GANG_CLUSTER_HOSTFILE" })
    }

    /// `gang ARGS --hostfile <the cluster's>`: mpirun over both nodes from outside Slurm.
    fn hostfile_gang(&self, args: &[&str], runs: &Path, env: &[(&str, &str)]) -> Output {
        let mut c = self.command(gang_bin(), runs);
        c.args(&args[..1]).args(["--hostfile", self.hostfile()]).args(&args[1..]);
        c.envs(env.iter().copied());
        wait_guarded(c.spawn().expect("gang"), &format!("gang {args:?} over the hostfile"))
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The host column of `gang hello`'s table.
fn hosts_of_hello(stdout: &str) -> BTreeSet<String> {
    stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("rank"))
        .skip(1)
        .take_while(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

fn two_nodes() -> BTreeSet<String> {
    ["n1", "n2"].map(String::from).into()
}

#[test]
fn four_ranks_over_two_nodes_under_srun_report_two_hosts_and_pass_the_selftest() {
    let (c, _g) = cluster();
    let sc = Scratch::new("cluster-srun");
    let out = c.salloc_gang(&["hello", "--no-tag-output"], &sc.path("runs"), &[]);
    let stdout = assert_success(&out);
    assert!(stdout.contains("gang hello: 4 ranks met"), "{stdout}");
    assert_eq!(hosts_of_hello(&stdout), two_nodes(), "{stdout}");
    assert!(stdout.contains("every rank saw the right values"), "{stdout}");
    let out = c.salloc_gang(&["selftest", "--no-tag-output"], &sc.path("runs"), &[]);
    let stdout = assert_success(&out);
    assert!(stdout.contains("selftest passed") && stdout.contains("on each of 4 ranks"), "{stdout}");
}

#[test]
fn four_ranks_over_two_nodes_under_mpirun_report_two_hosts_and_pass_the_selftest() {
    let (c, _g) = cluster();
    let sc = Scratch::new("cluster-mpirun");
    let runs = sc.path("runs");
    let out = c.hostfile_gang(&["hello", "-n", "4", "--no-tag-output"], &runs, &[]);
    let stdout = assert_success(&out);
    assert_eq!(hosts_of_hello(&stdout), two_nodes(), "{stdout}");
    let out = c.hostfile_gang(&["selftest", "-n", "4", "--no-tag-output"], &runs, &[]);
    let stdout = assert_success(&out);
    assert!(stdout.contains("selftest passed") && stdout.contains("on each of 4 ranks"), "{stdout}");
    // Heartbeats came over TCP from both nodes.
    let run = newest_run(&runs);
    let log = std::fs::read_to_string(run.join("launcher.log")).unwrap();
    assert!(log.contains("gang: heartbeats on tcp:"), "{log}");
}

/// The newest run directory under `runs`.
fn newest_run(runs: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(runs).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    dirs.pop().expect("a run directory")
}

/// A binary classification set of 8,000 rows x 8 features in 4 files, written locally.
fn dataset(sc: &Scratch) -> PathBuf {
    let data = sc.path("data");
    let out = common::gang(
        &[
            "gen",
            "-n",
            "2",
            "--rows",
            "8000",
            "--features",
            "8",
            "--classes",
            "2",
            "--partitions",
            "4",
            "--output",
            s(&data),
        ],
        &sc.path("runs"),
    );
    assert_success(&out);
    data
}

/// The `gang train` arguments: 4 epochs of 4 steps of 500 rows at 4 ranks, a checkpoint
/// every 3 steps.
fn train_args<'a>(data: &'a Path, model: &'a Path, ckpt: &'a Path) -> Vec<&'a str> {
    vec![
        "--input",
        s(data),
        "--label",
        "y",
        "--model",
        "logistic",
        "--epochs",
        "6",
        "--batch-size",
        "500",
        "--lr",
        "0.05",
        "--checkpoint-dir",
        s(ckpt),
        "--checkpoint-every",
        "3",
        "--output",
        s(model),
    ]
}

/// The model of an uninterrupted 4-rank run on this host (plain mpirun).
fn clean_model(sc: &Scratch, data: &Path) -> Vec<u8> {
    let (model, ckpt) = (sc.path("clean.safetensors"), sc.path("clean-ckpt"));
    let mut args = vec!["train", "-n", "4"];
    args.extend(train_args(data, &model, &ckpt));
    assert_success(&common::gang(&args, &sc.path("runs")));
    std::fs::read(model).unwrap()
}

#[test]
fn a_task_killed_under_srun_is_restarted_in_the_allocation_with_the_uninterrupted_model() {
    let (c, _g) = cluster();
    let sc = Scratch::new("cluster-kill");
    let data = dataset(&sc);
    let reference = clean_model(&sc, &data);
    let (model, ckpt) = (sc.path("srun.safetensors"), sc.path("srun-ckpt"));
    let mut args = vec!["train", "--max-restarts", "1", "--restart-backoff", "0"];
    args.extend(train_args(&data, &model, &ckpt));
    // Rank 3 runs on the second node; it is SIGKILLed at step 10 (after the checkpoint of 9).
    let out = c.salloc_gang(&args, &sc.path("runs"), &[("GANG_FAULT", "rank=3,step=10,kind=kill")]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The cause names the killed rank's host (the gang spans two).
    assert!(stderr.contains("attempt 0 failed: rank 3 on n2 was killed by signal 9 (SIGKILL)"), "{stderr}");
    assert!(stderr.contains("restarted (1 of 1)"), "{stderr}");
    assert!(stdout.contains("resumed from the checkpoint of step 9"), "{stdout}");
    assert!(std::fs::read(&model).unwrap() == reference, "the model differs from the uninterrupted run's");
}

/// The pid and host of every rank of attempt `attempt` once all `world` have started.
fn started_ranks(run: &Path, attempt: u32, world: usize) -> Vec<(usize, u32, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let starts = gang_protocol::RunDir::open(run).with_attempt(attempt).starts().unwrap_or_default();
        if starts.len() == world {
            return starts.into_iter().map(|s| (s.rank, s.pid, s.host)).collect();
        }
        assert!(Instant::now() < deadline, "the ranks of attempt {attempt} did not all start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_rank_sigstopped_on_the_second_node_is_found_stalled_and_the_gang_restarted() {
    let (c, _g) = cluster();
    let sc = Scratch::new("cluster-stop");
    let data = dataset(&sc);
    let reference = clean_model(&sc, &data);
    let runs = sc.path("runs-stop");
    let (model, ckpt) = (sc.path("stop.safetensors"), sc.path("stop-ckpt"));
    let mut args = vec!["train", "-n", "4", "--max-restarts", "1", "--restart-backoff", "0", "--stall-timeout", "6"];
    args.extend(train_args(&data, &model, &ckpt));
    // Slow the steps down so that the stop lands in the middle of training.
    let mut cmd = c.command(gang_bin(), &runs);
    cmd.args(&args[..1]).args(["--hostfile", c.hostfile()]).args(&args[1..]);
    cmd.env("GANG_FAULT", "rank=0,step=1,kind=slow,ms=400");
    let child = cmd.spawn().unwrap();
    std::fs::create_dir_all(&runs).unwrap();
    let run = first_run_dir(&runs);
    let ranks = started_ranks(&run, 0, 4);
    let (rank, pid, _) = ranks.iter().find(|(_, _, h)| h == "n2").cloned().expect("a rank on n2");
    std::thread::sleep(Duration::from_secs(2));
    // The rank program's own pid (the supervisor's child): the whole process is frozen,
    // its heartbeat thread included.
    assert_eq!(unsafe_free_kill(pid, "STOP"), 0);
    let out = wait_guarded(child, "gang train with a stopped rank");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains(&format!("rank {rank} on n2 stalled (no heartbeat")), "{stderr}");
    assert!(std::fs::read(&model).unwrap() == reference, "the model differs from the uninterrupted run's");
}

/// `kill -SIG pid` through the kill command (no unsafe code in tests).
fn unsafe_free_kill(pid: u32, sig: &str) -> i32 {
    Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap().code().unwrap_or(-1)
}

#[test]
fn a_batch_job_written_by_gang_sbatch_runs_and_scancel_leaves_no_rank_behind() {
    let (c, _g) = cluster();
    let sc = Scratch::new("cluster-sbatch");
    let runs = sc.path("runs");
    std::fs::create_dir_all(&runs).unwrap();
    // A 2-task job: selftest.
    let log = sc.path("selftest.out");
    let script = sc.path("selftest.sbatch");
    let mut cmd = c.command(gang_bin(), &runs);
    cmd.args(["sbatch", "--ntasks", "2", "--output", s(&log), "--script", s(&script), "--submit", "--"]);
    cmd.args(["selftest", "--no-tag-output"]);
    let out = wait_guarded(cmd.spawn().unwrap(), "gang sbatch");
    let id = assert_success(&out).trim().to_string();
    assert!(id.parse::<u64>().is_ok(), "job id {id:?}");
    wait_job_gone(c, &id, &runs);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("selftest passed") && text.contains("on each of 2 ranks"), "{text}");

    // A long job, cancelled once its ranks run.
    let data = dataset(&sc);
    let (model, ckpt) = (sc.path("m.safetensors"), sc.path("ckpt"));
    let long_runs = sc.path("runs-long");
    let mut cmd = c.command(gang_bin(), &long_runs);
    cmd.args(["sbatch", "--nodes", "2", "--ntasks", "4", "--output", s(&sc.path("long.out"))]);
    cmd.args(["--script", s(&sc.path("long.sbatch")), "--submit", "--", "train"]);
    cmd.args(train_args(&data, &model, &ckpt));
    cmd.env("GANG_FAULT", "rank=0,step=1,kind=slow,ms=2000");
    let out = wait_guarded(cmd.spawn().unwrap(), "gang sbatch");
    let id = assert_success(&out).trim().to_string();
    let run = first_run_dir(&long_runs);
    let ranks = started_ranks(&run, 0, 4);
    assert_eq!(ranks.iter().map(|r| r.2.clone()).collect::<BTreeSet<_>>(), two_nodes());
    let cancelled = Instant::now();
    let st = c.command("scancel", &long_runs).arg(&id).status().unwrap();
    assert!(st.success());
    wait_job_gone(c, &id, &long_runs);
    let marker = format!("GANG_RUN_ID={}", run.file_name().unwrap().to_string_lossy());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !processes_with(&marker).is_empty() {
        assert!(Instant::now() < deadline, "left running after scancel: {:?}", processes_with(&marker));
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("scancel to no process of the run left: {:?}", cancelled.elapsed());
    assert!(!model.exists(), "a cancelled training wrote a model");
}

/// Waits until `squeue` no longer lists job `id`.
fn wait_job_gone(c: &Cluster, id: &str, runs: &Path) {
    let deadline = Instant::now() + common::HANG_GUARD;
    loop {
        let out = c.command("squeue", runs).args(["-h", "-j", id, "-o", "%T"]).output().unwrap();
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if state.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            // Cancelled, so that it does not hold the nodes for the tests after this one.
            let _ = c.command("scancel", runs).arg(id).status();
            panic!("job {id} still {state} after {:?}: cancelled", common::HANG_GUARD);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Pids of processes whose environment holds `entry` (the run's id: supervisors, ranks,
/// launchers of that run).
fn processes_with(entry: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        let Ok(env) = std::fs::read(e.path().join("environ")) else { continue };
        if env.split(|&b| b == 0).any(|kv| kv == entry.as_bytes()) {
            // Zombies (not reaped by a PID 1 that does not reap) hold no resources.
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            if !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z') {
                out.push(pid);
            }
        }
    }
    out
}

#[test]
fn map_stage_output_written_from_two_nodes_is_the_one_node_output() {
    let (c, _g) = cluster();
    let sc = Scratch::new("cluster-map");
    let runs = sc.path("runs");
    let data = dataset(&sc);
    let one = sc.path("std-1");
    assert_success(&common::gang(&["standardize", "-n", "1", "--input", s(&data), "--output", s(&one)], &runs));
    let two = sc.path("std-2nodes");
    let out = c.hostfile_gang(&["standardize", "-n", "4", "--input", s(&data), "--output", s(&two)], &runs, &[]);
    assert_success(&out);
    let srun = sc.path("std-srun");
    let out = c.salloc_gang(&["standardize", "--input", s(&data), "--output", s(&srun)], &runs, &[]);
    assert_success(&out);
    let digest = |d: &Path| {
        let m = gang::stage::Manifest::read(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        m.verify(d).unwrap();
        m.partitions.iter().map(|p| (p.file.clone(), p.rows, p.crc32)).collect::<Vec<_>>()
    };
    assert_eq!(digest(&two), digest(&one));
    assert_eq!(digest(&srun), digest(&one));
}

#[test]
fn the_mpirun_example_batch_script_runs_over_both_nodes_of_its_allocation() {
    let (c, _g) = cluster();
    let sc = Scratch::new("cluster-mpirun-in-alloc");
    let runs = sc.path("runs");
    let log = sc.path("hello.out");
    // examples/slurm/mpirun-in-allocation.sbatch as a user submits it, with gang on PATH.
    let path = format!("{}:{}", common::target_dir().display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = c.command("sbatch", &runs);
    cmd.args(["--parsable", "--output", s(&log)]).arg(repo().join("examples/slurm/mpirun-in-allocation.sbatch"));
    // As on a real cluster: inside the allocation hydra launches through Slurm (the cluster's
    // agent and control address are for launches from this host).
    cmd.env("PATH", path)
        .env_remove("HYDRA_LAUNCHER")
        .env_remove("HYDRA_LAUNCHER_EXEC")
        .env_remove("HYDRA_CONFIG_FILE");
    if common::mpi_is_mpich() {
        // The namespace nodes' names do not resolve (a real cluster's do): hydra's proxies
        // are told the batch host's address instead (n1, the first node of the job).
        let conf = sc.path("hydra.conf");
        std::fs::write(&conf, "-localhost 10.77.0.11\n").unwrap();
        cmd.env("HYDRA_CONFIG_FILE", conf);
    }
    let out = wait_guarded(cmd.spawn().unwrap(), "sbatch");
    let id = assert_success(&out).trim().to_string();
    wait_job_gone(c, &id, &runs);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("gang hello: 4 ranks met"), "{text}");
    assert_eq!(hosts_of_hello(&text.replace("[rank 0] ", "")), two_nodes(), "{text}");
    let run = newest_run(&runs);
    let log = std::fs::read_to_string(run.join("launcher.log")).unwrap();
    let attempt = log.lines().find(|l| l.starts_with("== attempt 0: ")).unwrap_or_else(|| panic!("{log}"));
    assert!(!attempt.contains("srun"), "launched with mpirun, not srun: {attempt}");
    assert!(log.contains("gang: heartbeats on tcp:"), "{log}");
}

#[test]
fn gpus_per_task_gives_each_rank_of_each_node_its_own_gres_gpu() {
    let (c, _g) = cluster();
    let sc = Scratch::new("cluster-gpus");
    let runs = sc.path("runs");
    // The cluster's nodes have two fake GPUs each (GRES over character devices).
    let script = "echo \"gpu-of $(hostname) $CUDA_VISIBLE_DEVICES $SLURM_STEP_GPUS\"";
    let mut cmd = c.command("salloc", &runs);
    cmd.args(["-N2", "-n4", "--gpus-per-task=1", "--quiet"]).arg(gang_bin());
    cmd.args(["run", "--gpus-per-task", "1", "--no-tag-output", "--", "sh", "-c", script]);
    let out = wait_guarded(cmd.spawn().unwrap(), "salloc gang run --gpus-per-task 1");
    let stdout = assert_success(&out);
    let seen: BTreeSet<(String, String)> = stdout
        .lines()
        .filter(|l| l.starts_with("gpu-of"))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[1].to_string(), w[2].to_string())
        })
        .collect();
    let want: BTreeSet<(String, String)> =
        [("n1", "0"), ("n1", "1"), ("n2", "0"), ("n2", "1")].map(|(h, g)| (h.to_string(), g.to_string())).into();
    assert_eq!(seen, want, "{stdout}");
}

#[test]
fn sigint_to_gang_under_srun_stops_the_step_on_both_nodes() {
    let (c, _g) = cluster();
    let sc = Scratch::new("cluster-sigint");
    let data = dataset(&sc);
    let runs = sc.path("runs-int");
    let (model, ckpt) = (sc.path("m.safetensors"), sc.path("ckpt"));
    let pidfile = sc.path("gang.pid");
    let mut cmd = c.command("salloc", &runs);
    // `exec` keeps the shell's pid: the pid file names gang itself.
    cmd.args(["-N2", "-n4", "-O", "--quiet", "sh", "-c", "echo $$ > \"$0\"; shift; exec \"$@\""]);
    cmd.arg(&pidfile).arg("--").arg(gang_bin()).arg("train").args(train_args(&data, &model, &ckpt));
    cmd.env("GANG_FAULT", "rank=0,step=1,kind=slow,ms=2000");
    let child = cmd.spawn().unwrap();
    std::fs::create_dir_all(&runs).unwrap();
    let run = first_run_dir(&runs);
    started_ranks(&run, 0, 4);
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let out = wait_guarded(child, "salloc gang train after SIGINT");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("gang: received SIGINT; the gang was stopped"), "{stderr}");
    let marker = format!("GANG_RUN_ID={}", run.file_name().unwrap().to_string_lossy());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !processes_with(&marker).is_empty() {
        assert!(Instant::now() < deadline, "left running after SIGINT: {:?}", processes_with(&marker));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_rank_exiting_with_an_error_on_the_second_node_ends_the_gang_naming_it() {
    // MPICH's hydra alone would leave the other ranks waiting forever here (more than one
    // proxy); Open MPI's mpirun ends the job itself.
    let (c, _g) = cluster();
    let sc = Scratch::new("cluster-exit");
    let data = dataset(&sc);
    let (model, ckpt) = (sc.path("m.safetensors"), sc.path("ckpt"));
    let mut args = vec!["train", "-n", "4"];
    args.extend(train_args(&data, &model, &ckpt));
    let out = c.hostfile_gang(&args, &sc.path("runs"), &[("GANG_FAULT", "rank=3,step=5,kind=exit")]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stderr.contains("rank 3 failed first: exited with code 3") && stderr.contains("host n2"), "{stderr}");
    assert!(!model.exists());
}

#[test]
fn ranks_that_never_start_stop_the_gang_at_the_start_timeout() {
    // MPICH's hydra told a control address its proxies on the nodes cannot reach waits
    // forever for them, before any rank starts: no rank records anything, no heartbeat
    // comes. The start timeout ends it.
    let (c, _g) = cluster();
    let sc = Scratch::new("cluster-start");
    let runs = sc.path("runs");
    let conf = sc.path("hydra.conf");
    std::fs::write(&conf, "-localhost 10.77.0.99\n").unwrap();
    let mut cmd = c.command(gang_bin(), &runs);
    cmd.args(["run", "-n", "4", "--mpirun", "mpiexec.mpich", "--hostfile", c.var("GANG_CLUSTER_HOSTFILE_MPICH")]);
    cmd.args(["--start-timeout", "3", "--", "sleep", "600"]).env("HYDRA_CONFIG_FILE", &conf);
    let started = Instant::now();
    let out = wait_guarded(cmd.spawn().unwrap(), "gang run with proxies that cannot call back");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(stderr.contains("gang: only 0 of 4 ranks started within 3 s"), "{stderr}");
    assert!(stderr.contains("(attempt 0; transient failure). The gang was stopped"), "{stderr}");
    eprintln!("ended {:?} after the start", started.elapsed());
    let run = newest_run(&runs);
    let marker = format!("GANG_RUN_ID={}", run.file_name().unwrap().to_string_lossy());
    assert!(processes_with(&marker).is_empty(), "left running: {:?}", processes_with(&marker));
}

/// The run directory that appears under `runs` (waits up to a minute for it).
fn first_run_dir(runs: &Path) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = std::fs::read_dir(runs).ok().and_then(|mut d| d.next()) {
            return r.unwrap().path();
        }
        assert!(Instant::now() < deadline, "no run directory under {}", runs.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}
