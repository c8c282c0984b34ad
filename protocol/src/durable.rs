//! The one durable write of gang: every file gang reports as written goes through here.
//!
//! A file is written to a temporary name in the directory of its target, fsynced, renamed
//! over the target, and then the directory is fsynced, so that after a crash at any moment
//! the target holds its old content or its new content, never a mix, and a rename that was
//! reported done survives a power loss. Temporary names start with a dot
//! (`.<name>.tmp-<pid>-<n>`), which every reader of gang's directories skips, so a
//! temporary file left by a crash never claims to be output.
//!
//! - [`write_file`] / [`write_atomic`]: the whole sequence for bytes in memory or for a
//!   writer that streams into the file; [`AtomicWrite`] sets the file's mode.
//! - [`rename_durable`] / [`rename_all`]: for callers that wrote and fsynced a temporary
//!   file (or directory) themselves, such as the output committer's partition files or a
//!   checkpoint's step directory: rename, then fsync the target's directory.
//! - [`sync_dir`]: makes removals and creations in a directory durable.
//!
//! ```
//! use gang_protocol::durable;
//!
//! let dir = std::env::temp_dir().join(format!("gang-durable-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("model.json");
//! durable::write_file(&path, b"{\"version\": 1}").unwrap();
//! // Streamed: the closure writes into the temporary file.
//! durable::write_atomic(&path, |f| {
//!     use std::io::Write;
//!     f.write_all(b"{\"version\": 2}")
//! })
//! .unwrap();
//! assert_eq!(std::fs::read(&path).unwrap(), b"{\"version\": 2}");
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One step of a durable write, in the order [`write_atomic`] takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Step {
    /// Creating the temporary file beside the target.
    CreateTemp,
    /// Writing the content into the temporary file.
    Write,
    /// fsync of the temporary file.
    SyncFile,
    /// Renaming the temporary file (or a caller's file) over the target.
    Rename,
    /// fsync of the target's directory.
    SyncDir,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::CreateTemp => "create a temporary file",
            Step::Write => "write",
            Step::SyncFile => "fsync",
            Step::Rename => "rename into place",
            Step::SyncDir => "fsync the directory",
        })
    }
}

/// A failed step of a durable write: which step, on which path, and the I/O error.
#[derive(Debug)]
pub struct Error {
    step: Step,
    path: PathBuf,
    source: io::Error,
}

impl Error {
    /// The step that failed.
    pub fn step(&self) -> Step {
        self.step
    }

    /// The path the step was about: the target of a write or rename, the directory of a
    /// directory fsync.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying I/O error.
    pub fn io_error(&self) -> &io::Error {
        &self.source
    }

    /// The underlying I/O error, by value.
    pub fn into_io_error(self) -> io::Error {
        self.source
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.path.display(), self.step, self.source)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<Error> for io::Error {
    /// Keeps the kind of the I/O error; the message names the path and the step.
    fn from(e: Error) -> io::Error {
        io::Error::new(e.source.kind(), e.to_string())
    }
}

/// The result of a durable write.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Options of a durable write: the mode of the file on Unix.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("gang-durable-mode-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// gang_protocol::durable::AtomicWrite::new().mode(0o600).write_file(&dir.join("secret"), b"x").unwrap();
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct AtomicWrite {
    mode: Option<u32>,
}

impl AtomicWrite {
    /// A write with the default mode (as `File::create`: 0o666 less the umask).
    pub fn new() -> Self {
        AtomicWrite::default()
    }

    /// The file's permission bits on Unix (ignored elsewhere).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Writes `bytes` to `path` durably (see [`write_file`]).
    ///
    /// # Errors
    /// The step that failed; the target is unchanged unless only the directory fsync failed.
    pub fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        self.write(path, |f| io::Write::write_all(f, bytes))
    }

    /// Writes `path` durably through `write` (see [`write_atomic`]).
    ///
    /// # Errors
    /// The step that failed; the target is unchanged unless only the directory fsync failed.
    pub fn write<T>(&self, path: &Path, write: impl FnOnce(&mut fs::File) -> io::Result<T>) -> Result<T> {
        write_with(&mut Os, self, path, write)
    }
}

/// Writes `bytes` to `path`: a temporary file in the same directory, write, fsync, rename
/// over `path`, fsync of the directory. The directory must exist.
///
/// # Errors
/// The step that failed, naming its path. Before the rename the target is unchanged and
/// the temporary file is removed; if only the directory fsync fails the target already
/// holds the new content (which a power loss might still undo).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    AtomicWrite::new().write_file(path, bytes)
}

/// As [`write_file`], with `write` streaming the content into the temporary file (it need
/// not flush or fsync: that is the next step). Returns what `write` returns.
///
/// # Errors
/// As [`write_file`]; an error of `write` is [`Step::Write`].
pub fn write_atomic<T>(path: &Path, write: impl FnOnce(&mut fs::File) -> io::Result<T>) -> Result<T> {
    AtomicWrite::new().write(path, write)
}

/// Renames `from` (a file or directory the caller wrote and fsynced) over `to`, then
/// fsyncs the directory of `to`. For a file written in place, use [`write_file`].
///
/// # Errors
/// [`Step::Rename`] or [`Step::SyncDir`].
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    rename_all_with(&mut Os, [(from, to)])
}

/// Renames each `(from, to)` in order, then fsyncs every directory renamed into once:
/// for moving many files into one directory at the cost of one directory fsync.
///
/// # Errors
/// The first failing rename (the earlier ones are done, the later ones not) or fsync.
pub fn rename_all<'a>(moves: impl IntoIterator<Item = (&'a Path, &'a Path)>) -> Result<()> {
    rename_all_with(&mut Os, moves)
}

/// fsyncs the directory `dir`: its entries (creations, renames, removals) become durable.
/// A no-op where directories cannot be opened (not Unix).
///
/// # Errors
/// [`Step::SyncDir`].
pub fn sync_dir(dir: &Path) -> Result<()> {
    Os.sync_dir(dir).map_err(|e| fail(Step::SyncDir, dir, e))
}

/// The file-system operations of a durable write, one per [`Step`] (plus removing the
/// temporary file after a failure), so that a test can record them or fail one.
trait Steps {
    fn create_temp(&mut self, tmp: &Path, mode: Option<u32>) -> io::Result<fs::File>;
    fn write<T>(&mut self, file: &mut fs::File, write: impl FnOnce(&mut fs::File) -> io::Result<T>) -> io::Result<T>;
    fn sync_file(&mut self, file: &fs::File) -> io::Result<()>;
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
    fn remove_temp(&mut self, tmp: &Path);
}

/// The real file system.
struct Os;

impl Steps for Os {
    fn create_temp(&mut self, tmp: &Path, mode: Option<u32>) -> io::Result<fs::File> {
        let mut o = fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        if let Some(mode) = mode {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        o.open(tmp)
    }

    fn write<T>(&mut self, file: &mut fs::File, write: impl FnOnce(&mut fs::File) -> io::Result<T>) -> io::Result<T> {
        write(file)
    }

    fn sync_file(&mut self, file: &fs::File) -> io::Result<()> {
        file.sync_all()
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        #[cfg(unix)]
        {
            fs::File::open(dir)?.sync_all()
        }
        #[cfg(not(unix))]
        {
            let _ = dir;
            Ok(())
        }
    }

    fn remove_temp(&mut self, tmp: &Path) {
        let _ = fs::remove_file(tmp);
    }
}

fn fail(step: Step, path: &Path, source: io::Error) -> Error {
    Error { step, path: path.to_path_buf(), source }
}

/// The directory of `path` (`.` for a bare name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// `.<name>.tmp-<pid>-<n>` beside `path`: hidden, and unique among the threads and
/// processes writing the same target.
fn temp_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir_of(path).join(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Whether `name` is a temporary name of [`write_file`] (a hidden file that is not output).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

fn write_with<S: Steps, T>(
    steps: &mut S,
    options: &AtomicWrite,
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> io::Result<T>,
) -> Result<T> {
    let tmp = temp_path(path);
    let mut file = steps.create_temp(&tmp, options.mode).map_err(|e| fail(Step::CreateTemp, path, e))?;
    let before_rename = (|| {
        let value = steps.write(&mut file, write).map_err(|e| fail(Step::Write, path, e))?;
        steps.sync_file(&file).map_err(|e| fail(Step::SyncFile, path, e))?;
        drop(file);
        steps.rename(&tmp, path).map_err(|e| fail(Step::Rename, path, e))?;
        Ok(value)
    })();
    let value = match before_rename {
        Ok(v) => v,
        Err(e) => {
            steps.remove_temp(&tmp);
            return Err(e);
        }
    };
    let dir = dir_of(path);
    steps.sync_dir(dir).map_err(|e| fail(Step::SyncDir, dir, e))?;
    Ok(value)
}

fn rename_all_with<'a, S: Steps>(steps: &mut S, moves: impl IntoIterator<Item = (&'a Path, &'a Path)>) -> Result<()> {
    let mut dirs: Vec<&Path> = Vec::new();
    for (from, to) in moves {
        steps.rename(from, to).map_err(|e| fail(Step::Rename, to, e))?;
        let dir = dir_of(to);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for dir in dirs {
        steps.sync_dir(dir).map_err(|e| fail(Step::SyncDir, dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real file system, recording each step and failing the chosen one. At every step,
    /// before it runs, it checks what a crash at that moment would leave: the target holds
    /// the old or the new content in whole, and nothing else in the directory but
    /// temporary files.
    struct Recorder {
        steps: Vec<Step>,
        fail_at: Option<Step>,
        target: PathBuf,
        old: Option<Vec<u8>>,
        new: Vec<u8>,
        removed_temp: bool,
        check: bool,
    }

    impl Recorder {
        fn new(target: &Path, new: &[u8], fail_at: Option<Step>) -> Recorder {
            Recorder {
                steps: Vec::new(),
                fail_at,
                target: target.to_path_buf(),
                old: fs::read(target).ok(),
                new: new.to_vec(),
                removed_temp: false,
                check: true,
            }
        }

        /// Records `step`, checks the crash state, and fails if asked.
        fn enter(&mut self, step: Step) -> io::Result<()> {
            self.steps.push(step);
            self.check_crash_state();
            if self.fail_at == Some(step) {
                return Err(io::Error::other(format!("injected failure at {step}")));
            }
            Ok(())
        }

        fn check_crash_state(&self) {
            if !self.check {
                return;
            }
            let now = fs::read(&self.target).ok();
            assert!(
                now == self.old || now.as_deref() == Some(&self.new[..]),
                "at {:?} the target holds neither the old nor the new content: {now:?}",
                self.steps
            );
            for e in fs::read_dir(dir_of(&self.target)).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(
                    Some(name.as_str()) == self.target.file_name().and_then(|n| n.to_str()) || is_temp_name(&name),
                    "{name} would be left by a crash at {:?} and is not a temporary name",
                    self.steps
                );
            }
        }
    }

    impl Steps for Recorder {
        fn create_temp(&mut self, tmp: &Path, mode: Option<u32>) -> io::Result<fs::File> {
            assert_eq!(dir_of(tmp), dir_of(&self.target), "the temporary file is not beside the target");
            assert!(is_temp_name(&tmp.file_name().unwrap().to_string_lossy()));
            self.enter(Step::CreateTemp)?;
            Os.create_temp(tmp, mode)
        }

        fn write<T>(
            &mut self,
            file: &mut fs::File,
            write: impl FnOnce(&mut fs::File) -> io::Result<T>,
        ) -> io::Result<T> {
            self.enter(Step::Write)?;
            // A crash half-way through the write: half of the content is in the temp file.
            io::Write::write_all(file, &self.new[..self.new.len() / 2])?;
            self.check_crash_state();
            use std::io::Seek;
            file.seek(io::SeekFrom::Start(0))?;
            Os.write(file, write)
        }

        fn sync_file(&mut self, file: &fs::File) -> io::Result<()> {
            self.enter(Step::SyncFile)?;
            Os.sync_file(file)
        }

        fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
            self.enter(Step::Rename)?;
            Os.rename(from, to)
        }

        fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
            self.enter(Step::SyncDir)?;
            Os.sync_dir(dir)
        }

        fn remove_temp(&mut self, tmp: &Path) {
            self.removed_temp = true;
            Os.remove_temp(tmp)
        }
    }

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(what: &str) -> Scratch {
            let p = std::env::temp_dir().join(format!("gang-durable-{what}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }

        fn names(&self) -> Vec<String> {
            let mut v: Vec<String> =
                fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            v.sort();
            v
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const ALL: [Step; 5] = [Step::CreateTemp, Step::Write, Step::SyncFile, Step::Rename, Step::SyncDir];

    #[test]
    fn a_write_takes_its_steps_in_order_and_replaces_the_target_in_whole() {
        let s = Scratch::new("order");
        let target = s.0.join("record.json");
        fs::write(&target, b"old content").unwrap();
        let new = b"the new content, longer than the old".to_vec();
        let mut rec = Recorder::new(&target, &new, None);
        write_with(&mut rec, &AtomicWrite::new(), &target, |f| io::Write::write_all(f, &new)).unwrap();
        assert_eq!(rec.steps, ALL);
        assert!(!rec.removed_temp);
        assert_eq!(fs::read(&target).unwrap(), new);
        assert_eq!(s.names(), vec!["record.json"]);
    }

    #[test]
    fn a_failure_at_any_step_leaves_the_old_or_the_new_content_and_no_temporary_file() {
        for had_old in [true, false] {
            for step in ALL {
                let s = Scratch::new(&format!("fail-{step:?}-{had_old}"));
                let target = s.0.join("model.safetensors");
                if had_old {
                    fs::write(&target, b"old model").unwrap();
                }
                let new = b"new model, whole".to_vec();
                let mut rec = Recorder::new(&target, &new, Some(step));
                let e =
                    write_with(&mut rec, &AtomicWrite::new(), &target, |f| io::Write::write_all(f, &new)).unwrap_err();
                assert_eq!(e.step(), step, "{e}");
                assert!(e.to_string().contains("injected failure"), "{e}");
                // The steps up to the failing one ran, in order, and no further.
                let upto = ALL.iter().position(|s| *s == step).unwrap();
                assert_eq!(rec.steps, ALL[..=upto], "failing at {step:?}");
                let now = fs::read(&target).ok();
                if step == Step::SyncDir {
                    // Renamed already: the new content, reported as not (yet) durable.
                    assert_eq!(now.as_deref(), Some(&new[..]));
                    assert_eq!(e.path(), s.0.as_path());
                } else {
                    assert_eq!(now, had_old.then(|| b"old model".to_vec()), "failing at {step:?}");
                    assert_eq!(e.path(), target.as_path());
                }
                let expected: Vec<&str> =
                    if had_old || step == Step::SyncDir { vec!["model.safetensors"] } else { vec![] };
                assert_eq!(s.names(), expected, "failing at {step:?}: a temporary file is left");
            }
        }
    }

    #[test]
    fn an_error_of_the_writer_is_a_write_error_and_keeps_the_old_content() {
        let s = Scratch::new("writer");
        let target = s.0.join("x");
        write_file(&target, b"one").unwrap();
        let e = write_atomic(&target, |f| {
            io::Write::write_all(f, b"par")?;
            Err::<(), _>(io::Error::other("the encoder failed"))
        })
        .unwrap_err();
        assert_eq!(e.step(), Step::Write);
        assert!(e.to_string().contains("the encoder failed") && e.to_string().contains("/x"), "{e}");
        assert_eq!(fs::read(&target).unwrap(), b"one");
        assert_eq!(s.names(), vec!["x"]);
        assert_eq!(write_atomic(&target, |f| io::Write::write_all(f, b"two").map(|_| 7)).unwrap(), 7);
        assert_eq!(fs::read(&target).unwrap(), b"two");
    }

    #[test]
    fn renames_fsync_each_target_directory_once_after_renaming() {
        let s = Scratch::new("renames");
        let (a, b) = (s.0.join("a"), s.0.join("sub"));
        fs::create_dir_all(&b).unwrap();
        for n in ["1", "2", "3"] {
            fs::write(s.0.join(format!("t{n}")), n).unwrap();
        }
        let (t1, t2, t3) = (s.0.join("t1"), s.0.join("t2"), s.0.join("t3"));
        let (d1, d2, d3) = (a.clone(), b.join("2"), b.join("3"));
        let mut rec = Recorder { check: false, ..Recorder::new(&a, b"1", None) };
        rename_all_with(
            &mut rec,
            [(t1.as_path(), d1.as_path()), (t2.as_path(), d2.as_path()), (t3.as_path(), d3.as_path())],
        )
        .unwrap();
        assert_eq!(rec.steps, [Step::Rename, Step::Rename, Step::Rename, Step::SyncDir, Step::SyncDir]);
        assert_eq!(fs::read(&d3).unwrap(), b"3");
        // A failing rename names its target and renames nothing after it.
        let mut rec = Recorder { check: false, ..Recorder::new(&s.0.join("none"), b"", Some(Step::Rename)) };
        let e = rename_all_with(&mut rec, [(d1.as_path(), s.0.join("z").as_path())]).unwrap_err();
        assert_eq!((e.step(), e.path()), (Step::Rename, s.0.join("z").as_path()));
        assert!(d1.exists());
    }

    #[test]
    fn the_mode_is_applied() {
        let s = Scratch::new("mode");
        let target = s.0.join("private");
        AtomicWrite::new().mode(0o600).write_file(&target, b"x").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn io_errors_keep_their_kind() {
        let s = Scratch::new("kind");
        let e = write_file(&s.0.join("missing-dir").join("f"), b"x").unwrap_err();
        assert_eq!(e.step(), Step::CreateTemp);
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        assert!(io.to_string().contains("missing-dir"), "{io}");
    }
}
