//! The C and Fortran API as its users get it: libgang built and installed by cargo-c
//! (`./dev test` installs it under `$GANG_CAPI_PREFIX`), C and Fortran programs compiled
//! with mpicc/mpifort against it through pkg-config, run by the real `gang run` and
//! mpirun.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{assert_success, gang, gang_env, mpirun_n, text, wait_guarded, Scratch};

/// Where libgang is installed: `$GANG_CAPI_PREFIX` (set by `./dev test`).
fn prefix() -> PathBuf {
    let p = std::env::var_os("GANG_CAPI_PREFIX").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "GANG_CAPI_PREFIX is not set: these tests build C and Fortran programs against an installed libgang; \
             run them through ./dev test, or install it first (./dev capi install PREFIX) and set \
             GANG_CAPI_PREFIX=PREFIX"
        )
    });
    assert!(
        p.join("lib/pkgconfig/gang.pc").is_file(),
        "{} holds no lib/pkgconfig/gang.pc: install libgang there (./dev capi install {})",
        p.display(),
        p.display()
    );
    p
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `pkg-config ARGS gang` against the installed libgang.
fn pkg_config(args: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(args)
        .arg("gang")
        .env("PKG_CONFIG_PATH", prefix().join("lib/pkgconfig"))
        .output()
        .expect("pkg-config (apt-get install pkg-config)");
    assert!(out.status.success(), "pkg-config {args:?} gang: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

/// The MPI's C compiler (the one libgang was built for).
fn mpicc() -> &'static str {
    if common::mpi_is_mpich() {
        "mpicc.mpich"
    } else {
        "mpicc"
    }
}

fn mpifort() -> &'static str {
    if common::mpi_is_mpich() {
        "mpifort.mpich"
    } else {
        "mpifort"
    }
}

/// Runs a compiler command, failing with its output.
fn compile(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let (o, e) = text(&out);
    assert!(out.status.success(), "{what} failed: {cmd:?}\n{o}\n{e}");
    assert!(e.trim().is_empty(), "{what} warned: {cmd:?}\n{e}");
}

/// Builds a C program against the installed libgang, as a user would (pkg-config, an
/// rpath to the library), with every warning an error.
fn build_c(src: &Path, exe: &Path) {
    let libdir = pkg_config(&["--variable=libdir"]).remove(0);
    let mut cmd = Command::new(mpicc());
    cmd.args(["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror"])
        .arg(src)
        .args(pkg_config(&["--cflags", "--libs"]))
        .arg(format!("-Wl,-rpath,{libdir}"))
        .arg("-o")
        .arg(exe);
    compile(&mut cmd, &format!("building {}", src.display()));
}

/// Builds heat2d into `dir`.
fn heat2d(dir: &Path) -> PathBuf {
    let exe = dir.join("heat2d");
    build_c(&repo().join("examples/c/heat2d.c"), &exe);
    exe
}

/// The lines of `stdout` saying `surrogate loss X`, as numbers.
fn losses(stdout: &str) -> Vec<f64> {
    stdout.lines().filter_map(|l| l.split("surrogate loss ").nth(1)).map(|v| v.trim().parse().unwrap()).collect()
}

fn digest(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.split("field digest ").nth(1))
        .unwrap_or_else(|| panic!("no field digest in:\n{stdout}"))
        .trim()
        .to_string()
}

fn python() -> String {
    std::env::var("GANG_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs a Python snippet (pyarrow, numpy) with `args`; returns its stdout.
fn py(code: &str, args: &[&Path]) -> String {
    let out = Command::new(python()).arg("-c").arg(code).args(args).output().expect("python3");
    let (o, e) = text(&out);
    assert!(out.status.success(), "python failed:\n{o}\n{e}");
    o
}

#[test]
fn the_committed_header_is_the_one_cargo_c_generates_from_the_source() {
    let installed = std::fs::read_to_string(prefix().join("include/gang.h")).unwrap();
    let committed = std::fs::read_to_string(repo().join("capi/include/gang.h")).unwrap();
    assert!(
        installed == committed,
        "capi/include/gang.h is stale: cargo cbuild generated another header from capi/src; copy it: \
         cp {}/include/gang.h capi/include/gang.h",
        prefix().display()
    );
    let mpi = pkg_config(&["--variable=mpi"]).join(" ");
    let want = if common::mpi_is_mpich() { "MPICH" } else { "Open MPI" };
    assert_eq!(mpi, want, "gang.pc names the MPI of the build");
    let gang_mpi = std::fs::read_to_string(prefix().join("include/gang_mpi.h")).unwrap();
    assert!(gang_mpi.contains(&format!("#define GANG_MPI_LIBRARY \"{want}\"")), "{gang_mpi}");
}

#[test]
fn the_header_compiles_as_c99_and_as_cpp() {
    let s = Scratch::new("capi-header");
    let c = s.path("h.c");
    std::fs::write(&c, "#include <gang.h>\nint main(void) { return gang_version()[0] == '0' ? 0 : 1; }\n").unwrap();
    let cflags = pkg_config(&["--cflags"]);
    let mut cc = Command::new(mpicc());
    cc.args(["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-fsyntax-only"]).args(&cflags).arg(&c);
    compile(&mut cc, "gang.h as C99");
    let cpp = s.path("h.cpp");
    std::fs::write(&cpp, "#include <gang.h>\nint main() { gang_t *g = nullptr; return gang_finalize(g); }\n").unwrap();
    let cxx = if common::mpi_is_mpich() { "mpicxx.mpich" } else { "mpicxx" };
    let mut cc = Command::new(cxx);
    // MPI's own deprecated C++ bindings (not gang's header) warn under -Wextra: left out.
    cc.args(["-DOMPI_SKIP_MPICXX", "-DMPICH_SKIP_MPICXX"]);
    cc.args(["-std=c++11", "-pedantic", "-Wall", "-Wextra", "-Werror", "-fsyntax-only"]).args(&cflags).arg(&cpp);
    compile(&mut cc, "gang.h as C++11");
}

#[test]
fn every_bad_argument_and_wrong_order_returns_its_code_and_a_message() {
    let s = Scratch::new("capi-badargs");
    let exe = s.path("bad_args");
    build_c(&repo().join("capi/tests/c/bad_args.c"), &exe);
    let child = mpirun_n(2).arg(&exe).arg(&s.0).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let out = wait_guarded(child, "bad_args");
    let (o, e) = text(&out);
    assert!(out.status.success(), "bad_args failed:\n{o}\n{e}");
    assert!(o.contains(", 0 failures"), "{o}\n{e}");
    let checks: usize = o.split("bad_args: ").nth(1).and_then(|t| t.split(' ').next()).unwrap().parse().unwrap();
    assert!(checks > 90, "only {checks} checks ran:\n{o}");
    assert!(
        e.contains("passed over a checkpoint") && e.contains("step-00000004"),
        "no word of the damaged checkpoint:\n{e}"
    );
    // The model file it saved loads with the safetensors layout numpy reads.
    let shapes = py(
        "import json,struct,sys\nb=open(sys.argv[1],'rb').read()\nn=struct.unpack('<Q',b[:8])[0]\n\
         h=json.loads(b[8:8+n])\nprint(sorted((k,v['dtype'],v['shape']) for k,v in h.items() if k!='__metadata__'))",
        &[&s.path("model.safetensors")],
    );
    assert!(shapes.contains("('layer0.weight', 'F32', [1, 2])"), "{shapes}");
}

#[test]
fn heat2d_trains_its_surrogate_and_writes_snapshots_at_2_and_4_ranks() {
    let s = Scratch::new("capi-heat2d");
    let exe = heat2d(&s.0);
    for n in ["2", "4"] {
        let out_dir = s.path(&format!("out-{n}"));
        let o = assert_success(&gang(
            &["run", "-n", n, "--", exe.to_str().unwrap(), "--out", out_dir.to_str().unwrap()],
            &s.path("runs"),
        ));
        let l = losses(&o);
        assert_eq!(l.len(), 10, "{o}");
        assert!(l[9] < 0.5 * l[0], "the surrogate's loss did not fall at {n} ranks: {l:?}");
        // Every snapshot is whole: every grid point once, at its step, readable by pyarrow.
        let report = py(
            "import glob,sys,pyarrow.parquet as pq\nfor d in sorted(glob.glob(sys.argv[1]+'/snapshots/*')):\n    \
             t=pq.read_table(d)\n    pts=set(zip(t['i'].to_pylist(),t['j'].to_pylist()))\n    \
             print(d[-6:],t.num_rows,len(pts),sorted(set(t['step'].to_pylist())),len(glob.glob(d+'/part-*')))",
            &[&out_dir],
        );
        let want = [50, 100, 150, 200].map(|st| format!("{st:06} 4096 4096 [{st}] {n}")).join("\n");
        assert_eq!(report.trim(), want, "snapshots at {n} ranks");
        // The field's checkpoint loads in numpy as float64 of each rank's rows.
        let shards = py(
            "import glob,sys,json,struct\nfor f in sorted(glob.glob(sys.argv[1]+'/checkpoints/step-00000200/*.safetensors')):\n    \
             b=open(f,'rb').read();n=struct.unpack('<Q',b[:8])[0];h=json.loads(b[8:8+n]);print(h['u']['dtype'],h['u']['shape'])",
            &[&out_dir],
        );
        let rows = 64 / n.parse::<usize>().unwrap();
        assert_eq!(shards.trim(), vec![format!("F64 [{rows}, 64]"); n.parse().unwrap()].join("\n"));
    }
}

#[test]
fn heat2d_killed_part_way_restarts_from_its_checkpoint_and_ends_with_a_bitwise_identical_field_and_surrogate() {
    let s = Scratch::new("capi-heat2d-kill");
    let exe = heat2d(&s.0);
    let exe = exe.to_str().unwrap();
    let clean_dir = s.path("clean");
    let clean =
        assert_success(&gang(&["run", "-n", "4", "--", exe, "--out", clean_dir.to_str().unwrap()], &s.path("runs")));
    // Rank 2 dies at step 160: after the snapshot of step 150 and the checkpoint of 150.
    let killed_dir = s.path("killed");
    let out = gang_env(
        &[
            "run",
            "-n",
            "4",
            "--max-restarts",
            "1",
            "--restart-backoff",
            "0",
            "--",
            exe,
            "--out",
            killed_dir.to_str().unwrap(),
        ],
        &s.path("runs"),
        &[("GANG_FAULT", "rank=2,step=160,kind=kill")],
    );
    let (o, e) = text(&out);
    assert!(out.status.success(), "the restarted gang failed:\n{o}\n{e}");
    assert!(e.contains("rank 2 was killed by signal 9"), "{e}");
    assert!(o.contains("restarted from the checkpoint of step 150"), "{o}");
    assert_eq!(digest(&o), digest(&clean), "the field after the restart differs from an uninterrupted run");
    let model = |d: &Path| std::fs::read(d.join("surrogate.safetensors")).unwrap();
    assert!(
        model(&killed_dir) == model(&clean_dir),
        "the surrogate after the restart differs from an uninterrupted run's (its state is in the checkpoints)"
    );
    // Every snapshot holds its step exactly once, and the same rows as the clean run's.
    let compare = "import glob,sys,pyarrow.parquet as pq\n\
        a=sorted(glob.glob(sys.argv[1]+'/snapshots/*'));b=sorted(glob.glob(sys.argv[2]+'/snapshots/*'))\n\
        assert [x[-11:] for x in a]==[x[-11:] for x in b],(a,b)\n\
        for x,y in zip(a,b):\n    s=pq.read_table(x).sort_by([('i','ascending'),('j','ascending')])\n    \
        t=pq.read_table(y).sort_by([('i','ascending'),('j','ascending')])\n    assert s.num_rows==4096 and s.equals(t),x\n\
        print(len(a))";
    assert_eq!(py(compare, &[&killed_dir, &clean_dir]).trim(), "4");
}

#[test]
fn heat1d_in_fortran_runs_at_2_and_4_ranks() {
    let s = Scratch::new("capi-heat1d");
    let includedir = pkg_config(&["--variable=includedir"]).remove(0);
    let libdir = pkg_config(&["--variable=libdir"]).remove(0);
    let mut m = Command::new(mpifort());
    m.current_dir(&s.0).args(["-Wall", "-c"]).arg(Path::new(&includedir).join("gang.f90"));
    compile(&mut m, "the Fortran module gang.f90");
    let exe = s.path("heat1d");
    let mut f = Command::new(mpifort());
    f.current_dir(&s.0)
        .args(["-Wall", "-O2"])
        .arg(repo().join("examples/fortran/heat1d.f90"))
        .arg("gang.o")
        .args(pkg_config(&["--libs"]))
        .arg(format!("-Wl,-rpath,{libdir}"))
        .arg("-o")
        .arg(&exe);
    compile(&mut f, "heat1d.f90");
    let mut sums = Vec::new();
    for n in ["2", "4"] {
        let out_dir = s.path(&format!("out-{n}"));
        let o = assert_success(&gang(
            &["run", "-n", n, "--", exe.to_str().unwrap(), out_dir.to_str().unwrap()],
            &s.path("runs"),
        ));
        let line = o.lines().find(|l| l.contains("surrogate loss first")).unwrap_or_else(|| panic!("{o}"));
        let v: Vec<f64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        assert!(v.len() == 2 && v[1] < v[0], "the loss did not fall at {n} ranks: {line}");
        let sum = o.lines().find_map(|l| l.split("field sum ").nth(1)).unwrap().trim().parse::<f64>().unwrap();
        sums.push(sum);
        let rows = py(
            "import glob,sys,pyarrow.parquet as pq\nprint([pq.read_table(d).num_rows for d in sorted(glob.glob(sys.argv[1]+'/snapshots/*'))])",
            &[&out_dir],
        );
        assert_eq!(rows.trim(), "[4096, 4096, 4096, 4096]");
    }
    assert!((sums[0] - sums[1]).abs() <= 1e-12 * sums[0].abs(), "the field differs between 2 and 4 ranks: {sums:?}");
}

#[test]
fn heat2d_runs_clean_under_valgrind_as_far_as_gangs_allocations_go() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        panic!("valgrind is missing: apt-get install valgrind (./dev test installs it)");
    }
    let s = Scratch::new("capi-valgrind");
    let exe = heat2d(&s.0);
    let log = s.path("vg.%p.log");
    let child = mpirun_n(2)
        .args(["valgrind", "--leak-check=full", "--show-leak-kinds=definite", "--error-limit=no"])
        .arg(format!("--log-file={}", log.display()))
        .arg(&exe)
        .args([
            "--n",
            "16",
            "--steps",
            "40",
            "--train-every",
            "10",
            "--snapshot-every",
            "20",
            "--checkpoint-every",
            "20",
            "--out",
        ])
        .arg(s.path("out"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_guarded(child, "heat2d under valgrind");
    let (o, e) = text(&out);
    assert!(out.status.success(), "heat2d under valgrind failed:\n{o}\n{e}");
    let mut logs = 0;
    for f in std::fs::read_dir(&s.0).unwrap() {
        let p = f.unwrap().path();
        if !p.file_name().unwrap().to_string_lossy().starts_with("vg.") {
            continue;
        }
        logs += 1;
        let text = std::fs::read_to_string(&p).unwrap();
        // Valgrind's records are blocks of `==PID== ` lines separated by empty ones; MPI's
        // own (uninitialised bytes in its transports) are not gang's. A record with a frame
        // in libgang (its symbols, or its file when symbols are missing) is.
        let blocks: Vec<String> = text
            .lines()
            .map(|l| l.split_once("== ").map(|(_, r)| r).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
            .split("\n\n")
            .filter(|b| {
                ["libgang.so", "gang_capi::", "gang::", "gang_kernels::", "capi/src/"].iter().any(|m| b.contains(m))
            })
            .filter(|b| b.contains("Invalid") || b.contains("definitely lost") || b.contains("uninitialised"))
            .map(str::to_string)
            .collect();
        assert!(blocks.is_empty(), "valgrind found errors in libgang ({}):\n{}", p.display(), blocks.join("\n\n"));
        assert!(text.contains("ERROR SUMMARY"), "valgrind log {} is incomplete:\n{text}", p.display());
    }
    assert_eq!(logs, 2, "one valgrind log per rank");
}
