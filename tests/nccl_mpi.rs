//! The NCCL unique id travels over the host communicator for real: `examples/nccl_id.rs`
//! under `mpirun` with 2 and 4 ranks (and on the Local backend), with the real NCCL library
//! and no GPU (`ncclGetUniqueId` needs none).
//!
//! NCCL comes from `GANG_NCCL_LIBRARY` or `libnccl.so.2` on the loader path
//! (`pip install nvidia-nccl-cu13`). Without it the tests print a SKIPPED line, or fail
//! under `GANG_REQUIRE_NCCL=1` (CI). Without an `mpirun` the MPI test fails and says so.
#![cfg(feature = "cuda")]

mod common;

use common::{example, mpirun_n, text, wait_guarded};
use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};

/// Whether NCCL loads here; fails under `GANG_REQUIRE_NCCL=1` when it does not.
fn nccl_or_skip(test: &str) -> bool {
    match gang_gpu::nccl::Nccl::load() {
        Ok(_) => true,
        Err(e) => {
            let required = std::env::var("GANG_REQUIRE_NCCL").is_ok_and(|v| v.trim() == "1");
            assert!(!required, "GANG_REQUIRE_NCCL=1 but NCCL is not available: {e}");
            eprintln!("SKIPPED {test}: NCCL is not available ({e})");
            false
        }
    }
}

/// Runs `cmd` with captured output under the hang guard.
fn run(mut cmd: Command, what: &str) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start");
    wait_guarded(child, what)
}

/// Every one of `n` ranks printed its line, all with the same id checksum.
fn assert_same_id_on_every_rank(out: &Output, n: usize) {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "nccl_id failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("rank ")).collect();
    assert_eq!(lines.len(), n, "expected one line per rank:\n{stdout}\n{stderr}");
    let mut ranks = BTreeSet::new();
    let mut sums = BTreeSet::new();
    for l in &lines {
        // rank R of N: NCCL V unique id crc32 C, the same on all N ranks
        let w: Vec<&str> = l.split_whitespace().collect();
        assert!(l.ends_with(&format!("the same on all {n} ranks")) && w[3] == format!("{n}:"), "{l}");
        ranks.insert(w[1].parse::<usize>().expect("a rank"));
        sums.insert(w[9].trim_end_matches(',').to_string());
    }
    assert_eq!(ranks, (0..n).collect(), "{stdout}");
    assert_eq!(sums.len(), 1, "ranks print different ids:\n{stdout}");
}

#[test]
fn rank_0s_nccl_unique_id_reaches_every_rank_under_mpirun_at_2_and_4_ranks() {
    if !nccl_or_skip("rank_0s_nccl_unique_id_reaches_every_rank_under_mpirun_at_2_and_4_ranks") {
        return;
    }
    for n in [2, 4] {
        let mut cmd = mpirun_n(n);
        cmd.arg(example("nccl_id"));
        let out = run(cmd, &format!("mpirun -n {n} nccl_id"));
        assert_same_id_on_every_rank(&out, n);
    }
}

#[test]
fn rank_0s_nccl_unique_id_reaches_every_rank_on_the_local_backend() {
    if !nccl_or_skip("rank_0s_nccl_unique_id_reaches_every_rank_on_the_local_backend") {
        return;
    }
    let mut cmd = Command::new(example("nccl_id"));
    cmd.args(["--local", "3"]);
    let out = run(cmd, "nccl_id --local 3");
    assert_same_id_on_every_rank(&out, 3);
}
