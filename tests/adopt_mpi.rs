//! A program that owns MPI hands gang its own communicators: `mpirun -n 4` of
//! `examples/adopt_halves`, which splits `MPI_COMM_WORLD` into two halves and runs an
//! independent gang on each (collectives, a barrier section, a checkpoint). Real mpirun.

mod common;

use common::{example, mpirun_n, text, Scratch};

#[test]
fn two_gangs_on_the_halves_of_one_mpi_world_each_get_their_own_results() {
    let s = Scratch::new("adopt-halves");
    let out = mpirun_n(4).arg(example("adopt_halves")).arg(&s.0).output().expect("mpirun starts");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "mpirun failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let mut lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("world ")).collect();
    lines.sort();
    // World ranks 0 and 2 form half 0 (ranks 0, 1 of it), 1 and 3 half 1.
    assert_eq!(
        lines,
        vec![
            "world 0 half 0 rank 0 of 2 sum 2 gathered [0, 2] restored 7",
            "world 1 half 1 rank 0 of 2 sum 4 gathered [1, 3] restored 7",
            "world 2 half 0 rank 1 of 2 sum 2 gathered [0, 2] restored 7",
            "world 3 half 1 rank 1 of 2 sum 4 gathered [1, 3] restored 7",
        ],
        "stdout:\n{stdout}"
    );
    // Each half committed its own checkpoint of step 7, written by its two ranks.
    for h in 0..2 {
        let latest = std::fs::read_to_string(s.0.join(format!("half-{h}")).join("LATEST")).expect("LATEST of the half");
        assert!(latest.contains('7'), "half {h}: LATEST is {latest:?}");
    }
}
