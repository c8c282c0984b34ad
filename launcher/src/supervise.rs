//! `gang __rank-supervisor`: runs in every rank slot that mpirun/srun starts, between the
//! launcher and the user program.
//!
//! It records the start and the exit of the program in the run directory, forwards
//! SIGINT/SIGTERM/SIGHUP to it, optionally prefixes its output lines with `[rank R] `, and
//! makes sure it never outlives the slot: the supervisor dies with its parent (the MPI
//! daemon) and the program dies with the supervisor (`PR_SET_PDEATHSIG`).

use crate::sys;
use anyhow::{bail, Context, Result};
use gang_protocol::{hostname, now_unix_ns, vars, ExitRecord, ExitStatus, RunDir, StartRecord};
use signal_hook::iterator::Signals;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Arguments of the hidden `__rank-supervisor` command.
#[derive(Debug, clap::Args)]
pub struct SupervisorArgs {
    /// Prefix every output line with `[rank R] `.
    #[arg(long)]
    pub tag_output: bool,
    /// The program and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<OsString>,
}

/// Variables that carry the world rank, in the order they are trusted.
pub const RANK_VARS: [&str; 4] = ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"];

/// The world rank from the launcher's variables, looked up through `get`.
///
/// # Errors
/// None of [`RANK_VARS`] is set, or the first one set is not a number.
pub fn rank_from(get: impl Fn(&str) -> Option<String>) -> Result<usize> {
    for name in RANK_VARS {
        if let Some(v) = get(name) {
            return v.trim().parse().with_context(|| format!("{name}={v:?} is not a rank number"));
        }
    }
    bail!(
        "no rank in the environment (none of {}): the rank supervisor must be started by \
         mpirun or srun, which `gang run` does for you",
        RANK_VARS.join(", ")
    )
}

/// How long output copying may lag behind the program's exit, for the case where a
/// grandchild keeps the pipes open after the program itself ended.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Runs the supervisor; returns the exit code for the slot.
///
/// # Errors
/// No rank variable, a bad `GANG_ATTEMPT`, or the program cannot be started.
pub fn supervise(args: SupervisorArgs) -> Result<i32> {
    let rank = rank_from(|k| std::env::var(k).ok())?;
    let parent = sys::parent_pid();
    sys::die_with_parent().context("could not set the parent-death signal")?;
    if sys::parent_pid() != parent {
        bail!("the launcher of rank {rank} died before its supervisor started");
    }
    let attempt: u32 = match std::env::var(vars::ATTEMPT) {
        Ok(v) => v.parse().with_context(|| format!("{}={v:?} is not an attempt number", vars::ATTEMPT))?,
        Err(_) => 0,
    };
    // Records are best-effort without a run directory (the supervisor run by hand).
    let run = std::env::var_os(vars::RUN_DIR).map(|d| RunDir::open(d).with_attempt(attempt));

    let (program, program_args) = args.command.split_first().expect("clap requires a program");
    let mut cmd = Command::new(program);
    cmd.args(program_args);
    if args.tag_output {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    sys::signal_child_when_we_die(&mut cmd, sys::SIGKILL);

    // Catch the signals before the child exists; one arriving early is forwarded once the
    // child's pid is known.
    let child_pid = Arc::new(AtomicU32::new(0));
    let mut signals =
        Signals::new([sys::SIGINT, sys::SIGTERM, sys::SIGHUP]).context("could not install signal handlers")?;
    let forward_to = Arc::clone(&child_pid);
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let pid = forward_to.load(Ordering::SeqCst);
            if pid != 0 {
                let _ = sys::send_signal(pid, sig);
            }
        }
    });

    // Spawned from the main thread: the child's death signal fires when this thread ends.
    let mut child =
        cmd.spawn().with_context(|| format!("rank {rank}: could not start {}", program.to_string_lossy()))?;
    let pid = child.id();
    child_pid.store(pid, Ordering::SeqCst);
    let host = hostname();
    if let Some(run) = &run {
        let rec = StartRecord {
            rank,
            attempt,
            supervisor_pid: std::process::id(),
            pid,
            host: host.clone(),
            time_unix_ns: now_unix_ns(),
        };
        if let Err(e) = run.write_start(&rec) {
            eprintln!("gang: rank {rank}: could not write its start record to {}: {e}", run.path().display());
        }
    }

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut copiers = 0;
    let prefix = format!("[rank {rank}] ");
    if let Some(out) = child.stdout.take() {
        copiers += 1;
        spawn_copier(out, prefix.clone(), Stream::Stdout, done_tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        copiers += 1;
        spawn_copier(err, prefix, Stream::Stderr, done_tx.clone());
    }
    drop(done_tx);

    let status = child.wait().context("could not wait for the rank program")?;
    // The pid may be reused from here on: stop forwarding signals to it.
    child_pid.store(0, Ordering::SeqCst);
    let status = match (status.code(), status.signal()) {
        (Some(c), _) => ExitStatus::Code(c),
        (None, Some(s)) => ExitStatus::Signal(s),
        (None, None) => ExitStatus::Code(1),
    };
    if let Some(run) = &run {
        let rec = ExitRecord { rank, attempt, pid, status, host, time_unix_ns: now_unix_ns() };
        if let Err(e) = run.write_exit(&rec) {
            eprintln!("gang: rank {rank}: could not write its exit record to {}: {e}", run.path().display());
        }
    }
    for _ in 0..copiers {
        if done_rx.recv_timeout(OUTPUT_DRAIN_LIMIT).is_err() {
            break;
        }
    }
    let _ = io::stdout().flush();
    Ok(match status {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal(s) => 128 + s,
    })
}

/// Which of our own streams a copier writes to.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

fn spawn_copier(src: impl Read + Send + 'static, prefix: String, to: Stream, done: mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let _ = match to {
            Stream::Stdout => copy_tagged(src, &prefix, || io::stdout().lock()),
            Stream::Stderr => copy_tagged(src, &prefix, || io::stderr().lock()),
        };
        let _ = done.send(());
    });
}

/// Copies `src` to the writer that `lock` returns, line by line, each line prefixed with
/// `prefix` and written whole while holding the lock (so lines never interleave mid-line).
/// A last line without a newline is completed with one at end of input.
pub fn copy_tagged<W: Write>(src: impl Read, prefix: &str, lock: impl Fn() -> W) -> io::Result<()> {
    let mut reader = BufReader::new(src);
    let mut line = Vec::with_capacity(256);
    let mut out = Vec::with_capacity(256);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        out.clear();
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(&line);
        if !line.ends_with(b"\n") {
            out.push(b'\n');
        }
        let mut w = lock();
        w.write_all(&out)?;
        w.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[test]
    fn rank_variables_are_read_in_order() {
        let env: HashMap<&str, &str> = [("PMI_RANK", "5"), ("SLURM_PROCID", "9")].into();
        assert_eq!(rank_from(|k| env.get(k).map(|v| v.to_string())).unwrap(), 5);
        let env: HashMap<&str, &str> = [("OMPI_COMM_WORLD_RANK", "1"), ("PMIX_RANK", "2")].into();
        assert_eq!(rank_from(|k| env.get(k).map(|v| v.to_string())).unwrap(), 1);
        let err = rank_from(|_| None).unwrap_err().to_string();
        assert!(err.contains("no rank in the environment"), "{err}");
        assert!(rank_from(|_| Some("x".into())).is_err());
    }

    /// A writer into a shared buffer, standing in for a locked stdout.
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_tagged_and_a_partial_last_line_is_completed() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let input: &[u8] = b"one\n\ntwo\xff\nlast";
        copy_tagged(input, "[rank 3] ", || Shared(Arc::clone(&buf))).unwrap();
        assert_eq!(&*buf.lock().unwrap(), b"[rank 3] one\n[rank 3] \n[rank 3] two\xff\n[rank 3] last\n");
    }

    #[test]
    fn empty_input_writes_nothing() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        copy_tagged(&b""[..], "[rank 0] ", || Shared(Arc::clone(&buf))).unwrap();
        assert!(buf.lock().unwrap().is_empty());
    }
}
