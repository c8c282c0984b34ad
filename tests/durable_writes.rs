//! Every file gang reports as written goes through its one durable write
//! (`gang_protocol::durable`): a scan of the workspace's sources finds no other rename
//! into place, no `fs::write`, and creations or fsyncs of files only where a listed writer
//! streams into a temporary path that the durable write then renames.

use std::path::{Path, PathBuf};

/// The sources scanned: every crate of the workspace (their `tests/` and benches excluded:
/// they write scratch files, not gang's output).
const ROOTS: [&str; 7] = ["src", "launcher/src", "protocol/src", "kernels/src", "gpu/src", "capi", "examples"];

/// The only file that may rename, and create or fsync files freely.
const HELPER: &str = "protocol/src/durable.rs";

/// Files that create and fsync a file themselves, and why that is not a write into place.
const STREAMING_WRITERS: [(&str, &str); 3] = [
    ("src/stage/writer.rs", "partition sinks write the committer's attempt file, which rename_durable moves"),
    ("src/stage/hdf5.rs", "the HDF5 writer writes the committer's attempt file, which rename_durable moves"),
    ("src/checkpoint/store.rs", "shards are written into a temporary step directory, which rename_all moves"),
];

/// Files that create files through a helper of their own module for the writers above,
/// or append to a log that is never reported as a result (the launcher's `launcher.log`).
const PRIVATE_FILE_HELPERS: [&str; 2] = ["src/checkpoint/manifest.rs", "launcher/src/run.rs"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "tests" || n == "target") {
                continue;
            }
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The non-test code of a source file: what comes before its `#[cfg(test)]` module.
fn non_test_code(text: &str) -> &str {
    match text.find("\n#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// Lines of `code` that contain `needle` outside `//` comments, as `line: text`.
fn uses(code: &str, needle: &str) -> Vec<String> {
    code.lines()
        .enumerate()
        .filter(|(_, l)| {
            let code = l.split("//").next().unwrap_or("");
            code.contains(needle)
        })
        .map(|(i, l)| format!("{}: {}", i + 1, l.trim()))
        .collect()
}

#[test]
fn no_code_path_renames_into_place_or_writes_a_file_without_the_durable_write() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for r in ROOTS {
        sources(&root.join(r), &mut files);
    }
    assert!(files.len() > 40, "the scan found only {} source files under {}", files.len(), root.display());
    let mut found = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        // Build scripts write build outputs into OUT_DIR (capi/build.rs: gang_mpi.h), not
        // results anyone reads as gang's.
        if rel == HELPER || rel.ends_with("build.rs") {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let code = non_test_code(&text);
        let streaming = STREAMING_WRITERS.iter().any(|(p, _)| *p == rel);
        let mut banned = vec!["fs::rename(", "fs::write(", "fs::copy(", ".persist("];
        if !streaming {
            banned.extend(["File::create(", ".sync_all()", ".sync_data()"]);
        }
        if !streaming && !PRIVATE_FILE_HELPERS.contains(&rel.as_str()) {
            banned.extend([".create(true)", ".create_new(true)"]);
        }
        for needle in banned {
            for u in uses(code, needle) {
                found.push(format!("{rel}:{u}  ({needle})"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "files written outside gang_protocol::durable (write_file/write_atomic, or rename_durable/rename_all \
         after streaming into a temporary path):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scan_sees_what_it_bans() {
    // The scan itself: a rename in code is found, one in a comment or a test module is not.
    let text =
        "fn a() { std::fs::rename(x, y); }\n// fs::rename(a, b)\n#[cfg(test)]\nmod tests {\n fs::rename(p, q);\n}\n";
    let code = non_test_code(text);
    assert_eq!(uses(code, "fs::rename("), vec!["1: fn a() { std::fs::rename(x, y); }"]);
    // And the helper is where this test says it is.
    let helper = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(HELPER)).unwrap();
    assert!(helper.contains("fs::rename(from, to)") && helper.contains("pub fn rename_durable"));
}
