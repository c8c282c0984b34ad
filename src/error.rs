//! The error type of the rank runtime.

use std::path::PathBuf;

/// Result with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a rank.
///
/// Restart logic matches on the variants: a [`Error::GangFailed`] (a peer failed) is worth a
/// relaunch of the gang, an [`Error::Environment`] or [`Error::WorldSizeMismatch`] (the job
/// was launched wrongly) is not.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An MPI call returned an error code (communicators use `MPI_ERRORS_RETURN`).
    Mpi {
        /// The MPI function that failed.
        op: &'static str,
        /// The MPI error code.
        code: i32,
        /// `MPI_Error_string` of the code.
        message: String,
    },
    /// Another rank of the gang failed, so this rank's collective was abandoned.
    GangFailed {
        /// The rank that failed first.
        rank: usize,
        /// What it was doing (the collective or stage).
        stage: String,
        /// Its error or panic message.
        message: String,
    },
    /// The ranks called different collectives at the same point (a program bug that MPI
    /// would turn into a hang or garbage).
    CollectiveMismatch {
        /// This rank.
        rank: usize,
        /// The collective this rank called.
        called: &'static str,
        /// The collective another rank called.
        other_rank: usize,
        /// What that rank called.
        other_called: &'static str,
    },
    /// The launch environment is inconsistent (variables that disagree with each other or
    /// with MPI). The message names the variables.
    Environment(String),
    /// MPI reports a different world size than the launcher asked for: typically a program
    /// built against one MPI and started by another MPI's launcher.
    WorldSizeMismatch {
        /// What `MPI_Comm_size` says.
        mpi: usize,
        /// What the launcher intended.
        intended: usize,
        /// The variable the intended size came from.
        variable: &'static str,
    },
    /// A caller passed arguments that cannot work (wrong buffer count, unsupported
    /// reduction), detected before any communication.
    InvalidArgument(String),
    /// An I/O error about a file or directory.
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An error from user code or another library.
    External(Box<dyn std::error::Error + Send + Sync>),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Mpi { op, code, message } => write!(f, "{op} failed (MPI error {code}): {message}"),
            Error::GangFailed { rank, stage, message } => {
                write!(f, "the gang failed: rank {rank} failed in {stage}: {message}")
            }
            Error::CollectiveMismatch { rank, called, other_rank, other_called } => write!(
                f,
                "collective mismatch: rank {rank} called {called} while rank {other_rank} called \
                 {other_called}; every rank must call the same collectives in the same order"
            ),
            Error::Environment(msg) => write!(f, "{msg}"),
            Error::WorldSizeMismatch { mpi, intended, variable } => write!(
                f,
                "MPI reports a world of {mpi} rank(s) but the launcher started {intended} \
                 ({variable}={intended}): the program was most likely built against a different \
                 MPI than the mpirun/srun that started it (for example an MPICH build under \
                 Open MPI's mpirun); rebuild it against the launcher's MPI or use that MPI's \
                 launcher"
            ),
            Error::InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::External(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::External(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl Error {
    /// Wraps any error (for `?` on foreign errors inside rank code).
    pub fn external(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::External(e.into())
    }

    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}

impl From<Box<dyn std::error::Error + Send + Sync>> for Error {
    fn from(e: Box<dyn std::error::Error + Send + Sync>) -> Self {
        Error::External(e)
    }
}

impl From<String> for Error {
    fn from(msg: String) -> Self {
        Error::External(msg.into())
    }
}

impl From<&str> for Error {
    fn from(msg: &str) -> Self {
        Error::External(msg.into())
    }
}
