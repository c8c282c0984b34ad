//! A built-in job run again over its own committed output: done, not refused. Another
//! version of the stage (other statistics) is refused with the job's own flag named, and
//! a relaunched attempt with `--overwrite` does not redo a committed result.

mod common;

use common::{assert_success, gang, target_dir, text, Scratch};
use gang::stage::Manifest;
use std::path::Path;
use std::process::Command;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn standardize_run_twice_on_the_same_output_succeeds_and_another_version_needs_overwrite() {
    let sc = Scratch::new("jobs-rerun");
    let runs = sc.path("runs");
    let (data, out) = (sc.path("gen"), sc.path("std"));
    assert_success(&gang(
        &["gen", "-n", "2", "--rows", "6000", "--features", "3", "--partitions", "3", "--output", s(&data)],
        &runs,
    ));
    // gen too: the same command again is complete.
    let again = assert_success(&gang(
        &["gen", "-n", "2", "--rows", "6000", "--features", "3", "--partitions", "3", "--output", s(&data)],
        &runs,
    ));
    assert!(again.contains("gen: already complete"), "{again}");

    let standardize = |n: &str, extra: &[&str]| {
        let mut args = vec!["standardize", "-n", n, "--input", s(&data), "--output", s(&out)];
        args.extend_from_slice(extra);
        gang(&args, &runs)
    };
    let first = assert_success(&standardize("2", &[]));
    assert!(!first.contains("already complete"), "{first}");
    let committed = Manifest::read(&out).unwrap();
    // The same command again (and at another gang size): complete, nothing rewritten.
    for n in ["2", "1"] {
        let again = assert_success(&standardize(n, &[]));
        assert!(again.contains("standardize: already complete") && again.contains("3 partitions"), "{again}");
        assert_eq!(Manifest::read(&out).unwrap(), committed, "the committed manifest changed");
    }
    committed.verify(&out).unwrap();

    // Other statistics (f0 is kept as it is now): another stage, refused naming --overwrite.
    let refused = standardize("2", &["--keep", "y,f0"]);
    let (_, stderr) = text(&refused);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("already holds a committed result of a different stage"), "{stderr}");
    assert!(stderr.contains("pass --overwrite"), "{stderr}");
    assert_eq!(Manifest::read(&out).unwrap(), committed, "the refused stage touched the output");
    let replaced = assert_success(&standardize("2", &["--keep", "y,f0", "--overwrite"]));
    assert!(!replaced.contains("already complete"), "{replaced}");
    let new = Manifest::read(&out).unwrap();
    assert_ne!(new.fingerprint, committed.fingerprint);

    // A relaunched attempt (the launcher sets GANG_ATTEMPT) of the command with
    // --overwrite finds the result its first attempt committed and is done.
    let rank_bin = target_dir().join("gang-rank");
    let relaunched = Command::new(&rank_bin)
        .args(["--local", "2", "standardize", "--input", s(&data), "--output", s(&out), "--keep", "y,f0"])
        .arg("--overwrite")
        .env("GANG_ATTEMPT", "1")
        .output()
        .expect("start gang-rank");
    let (stdout, stderr) = text(&relaunched);
    assert!(relaunched.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("standardize: already complete"), "{stdout}");
    assert_eq!(Manifest::read(&out).unwrap(), new);
}
