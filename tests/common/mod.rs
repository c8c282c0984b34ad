//! What the multi-process tests share: finding the binaries, scratch directories, and
//! running `gang` with a hang guard.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A gang that has not finished within this is hung: the test fails (the bound guards
/// against hangs; it is not a performance assertion).
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// `target/<profile>`, from the path of the running test executable.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// The `gang` launcher, built by `cargo test --workspace`.
pub fn gang_bin() -> PathBuf {
    let p = target_dir().join("gang");
    assert!(
        p.is_file(),
        "the launcher {} is missing: run the tests with `cargo test --workspace` (or build it first \
         with `cargo build --workspace`)",
        p.display()
    );
    p
}

/// An example program of the `gang` package.
pub fn example(name: &str) -> PathBuf {
    let p = target_dir().join("examples").join(name);
    assert!(p.is_file(), "example {} is missing: `cargo test` builds it", p.display());
    p
}

/// The MPI launcher of the tests: `$GANG_MPIRUN` (as for `gang run`, a path or a name on
/// PATH, e.g. `mpiexec.mpich` for the tests of an MPICH build), else `mpirun`.
pub fn mpirun() -> PathBuf {
    let name = std::env::var_os("GANG_MPIRUN").filter(|v| !v.is_empty()).unwrap_or_else(|| "mpirun".into());
    let name = PathBuf::from(name);
    if name.components().count() > 1 {
        return name;
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(&name)).find(|p| p.is_file()))
        .unwrap_or(name)
}

/// Fails loudly when there is no MPI launcher (see [`mpirun`]).
pub fn require_mpirun() {
    let m = mpirun();
    assert!(
        m.is_file(),
        "{} is not there: install Open MPI (apt-get install openmpi-bin libopenmpi-dev), or set \
         GANG_MPIRUN to MPICH's mpiexec for an MPICH build; these tests need a real MPI",
        m.display()
    );
}

/// The MPI behind [`mpirun`]: MPICH when its `--version` is hydra's, else Open MPI.
pub fn mpi_is_mpich() -> bool {
    static MPICH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MPICH.get_or_init(|| {
        require_mpirun();
        let out = Command::new(mpirun()).arg("--version").output().expect("mpirun --version");
        String::from_utf8_lossy(&out.stdout).contains("HYDRA")
    })
}

/// `mpirun -n N` with what each MPI needs here: Open MPI as root and with more ranks than
/// cores (yielding when idle, or busy-polling ranks starve each other); hydra needs nothing.
pub fn mpirun_n(n: usize) -> Command {
    require_mpirun();
    let mut cmd = Command::new(mpirun());
    if !mpi_is_mpich() {
        cmd.args(["--allow-run-as-root", "--oversubscribe"]).env("OMPI_MCA_mpi_yield_when_idle", "1");
    }
    cmd.arg("-n").arg(n.to_string());
    cmd
}

/// A directory under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh, empty scratch directory for `tag`.
    pub fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("gang-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    /// `name` inside the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `gang ARGS` with run directories under `runs` and captured output.
pub fn gang(args: &[&str], runs: &Path) -> Output {
    gang_env(args, runs, &[])
}

/// [`gang`] with extra environment variables (`GANG_FAULT`, ...) for this run only.
pub fn gang_env(args: &[&str], runs: &Path, env: &[(&str, &str)]) -> Output {
    require_mpirun();
    let child = Command::new(gang_bin())
        .args(args)
        .envs(env.iter().copied())
        .env("GANG_RUN_ROOT", runs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gang");
    wait_guarded(child, &format!("gang {args:?}"))
}

/// Waits for `child`, killing it (and failing) if it outlives [`HANG_GUARD`].
pub fn wait_guarded(mut child: Child, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what} hung for {HANG_GUARD:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// stdout of a successful run; panics with both streams otherwise.
pub fn assert_success(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "gang failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    stdout
}

/// Names in `dir` that readers see (not `_*`, not `.*`), sorted; none if `dir` is missing.
pub fn visible(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('_') && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
