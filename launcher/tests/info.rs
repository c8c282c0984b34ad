//! `gang info`: JSON plan, GPU round-robin, and working without MPI.

mod common;

use common::{gang, GangProcess, TempDir};
use std::process::Command;

fn info(args: &[&str], env: &[(&str, &str)], dir: &TempDir) -> (Option<i32>, String) {
    let mut cmd = Command::new(gang());
    cmd.arg("info").args(args);
    for v in ["SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_JOB_NUM_NODES", "SLURM_CPUS_ON_NODE", "CUDA_VISIBLE_DEVICES"] {
        cmd.env_remove(v);
    }
    cmd.envs(env.iter().copied());
    let out = GangProcess::spawn(cmd, dir.path()).wait();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    (out.code, out.stdout)
}

#[test]
fn json_plan_lists_every_rank_on_the_cpu() {
    let dir = TempDir::new("info-json");
    let (_, out) = info(&["--json", "-n", "4"], &[], &dir);
    let v: serde_json::Value = serde_json::from_str(&out).expect("gang info --json prints JSON");
    let plan = v["plan"].as_array().unwrap();
    assert_eq!(plan.len(), 4);
    for (i, p) in plan.iter().enumerate() {
        assert_eq!(p["rank"], i);
        assert_eq!(p["local_rank"], i);
        assert_eq!(p["device_name"], "cpu");
    }
    assert!(v["cuda_visible_devices"].is_null());
    assert!(v["cores"].as_u64().unwrap() >= 1);
}

#[test]
fn visible_gpus_alternate_between_ranks() {
    let dir = TempDir::new("info-gpu");
    let (_, out) = info(&["--json", "-n", "4"], &[("CUDA_VISIBLE_DEVICES", "0,1")], &dir);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let devices: Vec<&str> = v["plan"].as_array().unwrap().iter().map(|p| p["device_name"].as_str().unwrap()).collect();
    assert_eq!(devices, ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]);
    assert_eq!(v["gpus"], serde_json::json!(["0", "1"]));
}

#[test]
fn slurm_allocation_is_reported_and_spreads_ranks_over_nodes() {
    let dir = TempDir::new("info-slurm");
    let env =
        [("SLURM_JOB_ID", "77"), ("SLURM_NTASKS", "4"), ("SLURM_JOB_NUM_NODES", "2"), ("SLURM_CPUS_ON_NODE", "2")];
    let (_, out) = info(&["--json"], &env, &dir);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["slurm"]["job_id"], "77");
    let nodes: Vec<(u64, u64)> = v["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["node"].as_u64().unwrap(), p["local_rank"].as_u64().unwrap()))
        .collect();
    assert_eq!(nodes, [(0, 0), (0, 1), (1, 0), (1, 1)]);
}

#[test]
fn works_and_says_so_without_mpi() {
    let dir = TempDir::new("info-nompi");
    let empty = TempDir::new("info-empty-path");
    let (_, out) = info(&[], &[("PATH", empty.path().to_str().unwrap()), ("GANG_MPIRUN", "")], &dir);
    assert!(out.contains("no MPI found"), "{out}");
    assert!(out.contains("CUDA_VISIBLE_DEVICES is unset"), "{out}");
    assert!(out.contains("not inside a Slurm allocation"), "{out}");
}

#[test]
fn reports_the_installed_mpi() {
    common::require_mpirun();
    let dir = TempDir::new("info-mpi");
    let (_, out) = info(&["--json", "-n", "1"], &[], &dir);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mpi"]["flavour"], common::gang_mpi(), "{out}");
    assert!(v["launcher"].as_str().unwrap().starts_with("mpirun"), "{out}");
    // The same MPI named with --mpirun rather than GANG_MPIRUN or PATH.
    let mpirun = common::mpirun();
    let (_, out) = info(&["--json", "--mpirun", mpirun.to_str().unwrap()], &[("GANG_MPIRUN", "")], &dir);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mpi"]["flavour"], common::gang_mpi(), "{out}");
    let (_, out) = info(&["--mpirun", "no-such-mpirun-for-gang-tests"], &[], &dir);
    assert!(out.contains("--mpirun no-such-mpirun-for-gang-tests: not found on PATH"), "{out}");
}
