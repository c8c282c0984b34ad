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
        /// Its error class (`MPI_Error_class`): what to match on, since codes are
        /// implementation-specific refinements of the standard classes.
        class: i32,
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
    /// The ranks entered different barrier sections (or the same name a different number
    /// of times): a program bug that would otherwise pair unrelated collectives.
    SectionMismatch {
        /// This rank.
        rank: usize,
        /// What every rank entered, in rank order: the section name and how many sections
        /// that rank had entered before it.
        entered: Vec<(String, u64)>,
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
        /// The MPI library this program runs with (`MPI_Get_library_version`, first line).
        library: String,
        /// The launcher that started the process, as its variables tell (`gang's launcher
        /// for MPICH (GANG_MPI=mpich)`, `Open MPI's mpirun (OMPI_COMM_WORLD_SIZE=4)`), if
        /// they tell.
        launcher_mpi: Option<String>,
    },
    /// A caller passed arguments that cannot work (wrong buffer count, unsupported
    /// reduction), detected before any communication.
    InvalidArgument(String),
    /// Input data that cannot be read: corrupt, truncated, missing dataset, wrong type.
    /// Names the file, the partition (when known) and the rank (when known).
    Input {
        /// The file.
        path: PathBuf,
        /// Where in the file: `row group 3`, `dataset /x`, `partition 5 (rows 0..1000)`.
        location: Option<String>,
        /// The rank that read it, filled in by the stage that ran the read.
        rank: Option<usize>,
        /// What is wrong and, where possible, what to do.
        detail: String,
    },
    /// Two inputs whose schemas differ where they must agree.
    SchemaMismatch {
        /// The file whose schema was taken as the reference.
        first: PathBuf,
        /// The file that differs.
        second: PathBuf,
        /// The field that differs.
        field: String,
        /// How it differs.
        detail: String,
    },
    /// An output location that cannot be used (already committed, not writable, ...).
    Output {
        /// The output path.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
    /// An Arrow error without a file to name.
    Arrow(arrow_schema::ArrowError),
    /// A Parquet error without a file to name.
    #[cfg(feature = "parquet")]
    Parquet(parquet::errors::ParquetError),
    /// An I/O error about a file or directory.
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An error from user code or another library.
    External(Box<dyn std::error::Error + Send + Sync>),
    /// An error of user code with the class the code gave it (see [`Error::classified`]).
    Classified {
        /// Whether a restart can help.
        class: crate::failure::FailureClass,
        /// The error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Mpi { op, code, class, message } => {
                write!(f, "{op} failed (MPI error {code}, class {class}): {message}")
            }
            Error::GangFailed { rank, stage, message } => {
                write!(f, "the gang failed: rank {rank} failed in {stage}: {message}")
            }
            Error::CollectiveMismatch { rank, called, other_rank, other_called } => write!(
                f,
                "collective mismatch: rank {rank} called {called} while rank {other_rank} called \
                 {other_called}; every rank must call the same collectives in the same order"
            ),
            Error::SectionMismatch { rank, entered } => {
                write!(f, "barrier section mismatch (seen by rank {rank}): ")?;
                // Group ranks that entered the same thing, so a large gang reads short.
                let mut groups: Vec<(&(String, u64), Vec<usize>)> = Vec::new();
                for (r, e) in entered.iter().enumerate() {
                    match groups.iter_mut().find(|(g, _)| *g == e) {
                        Some((_, ranks)) => ranks.push(r),
                        None => groups.push((e, vec![r])),
                    }
                }
                for (i, ((name, index), ranks)) in groups.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "; " };
                    let who = if ranks.len() == 1 { "rank" } else { "ranks" };
                    let list = ranks.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
                    write!(f, "{sep}{who} {list} entered {name:?} as section #{index}")?;
                }
                write!(f, "; every rank must enter the same barrier sections in the same order")
            }
            Error::Environment(msg) => write!(f, "{msg}"),
            Error::WorldSizeMismatch { mpi, intended, variable, library, launcher_mpi } => {
                write!(f, "MPI reports a world of {mpi} rank(s) but the launcher started {intended} ({variable}={intended}): ")?;
                crate::env::write_mpi_mismatch(f, library, launcher_mpi.as_deref())
            }
            Error::InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
            Error::Input { path, location, rank, detail } => {
                write!(f, "{}", path.display())?;
                match (location, rank) {
                    (Some(l), Some(r)) => write!(f, " ({l}, rank {r})")?,
                    (Some(l), None) => write!(f, " ({l})")?,
                    (None, Some(r)) => write!(f, " (rank {r})")?,
                    (None, None) => {}
                }
                write!(f, ": {detail}")
            }
            Error::SchemaMismatch { first, second, field, detail } => write!(
                f,
                "schema mismatch in field {field:?} between {} and {}: {detail}; every input \
                 file must have the same schema (select common columns with --columns)",
                first.display(),
                second.display()
            ),
            Error::Output { path, detail } => write!(f, "output {}: {detail}", path.display()),
            Error::Arrow(e) => write!(f, "arrow: {e}"),
            #[cfg(feature = "parquet")]
            Error::Parquet(e) => write!(f, "parquet: {e}"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::External(e) => write!(f, "{e}"),
            Error::Classified { source, .. } => write!(f, "{source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::External(e) => Some(e.as_ref()),
            Error::Classified { source, .. } => Some(source.as_ref()),
            Error::Arrow(e) => Some(e),
            #[cfg(feature = "parquet")]
            Error::Parquet(e) => Some(e),
            _ => None,
        }
    }
}

impl Error {
    /// Whether a restart of the gang can mend this error, as recorded for the launcher:
    /// [`FailureClass::Usage`](crate::failure::FailureClass::Usage) for arguments, launch
    /// environments and programs that cannot work (invalid arguments, a wrong world size,
    /// mismatched collectives or sections, an unusable output location);
    /// [`FailureClass::Input`](crate::failure::FailureClass::Input) for bad input files;
    /// [`FailureClass::Transient`](crate::failure::FailureClass::Transient) for everything
    /// else (MPI and I/O errors, a failed peer, errors of user code).
    pub fn class(&self) -> crate::failure::FailureClass {
        use crate::failure::FailureClass;
        match self {
            Error::InvalidArgument(_)
            | Error::Environment(_)
            | Error::WorldSizeMismatch { .. }
            | Error::CollectiveMismatch { .. }
            | Error::SectionMismatch { .. }
            | Error::Output { .. } => FailureClass::Usage,
            Error::Input { .. } | Error::SchemaMismatch { .. } => FailureClass::Input,
            Error::Classified { class, .. } => *class,
            _ => FailureClass::Transient,
        }
    }

    /// `error` with an explicit class (for errors of user code that a restart cannot mend:
    /// `Error::classified(FailureClass::Usage, "--steps must be positive")`).
    pub fn classified(
        class: crate::failure::FailureClass,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Classified { class, source: error.into() }
    }

    /// Wraps any error (for `?` on foreign errors inside rank code).
    pub fn external(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::External(e.into())
    }

    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}

impl Error {
    /// An input error about `path`.
    pub fn input(path: impl Into<PathBuf>, location: Option<String>, detail: impl Into<String>) -> Error {
        Error::Input { path: path.into(), location, rank: None, detail: detail.into() }
    }

    /// Fills in the rank of an [`Error::Input`] that does not name one yet.
    pub fn with_rank(self, r: usize) -> Error {
        match self {
            Error::Input { path, location, rank: None, detail } => {
                Error::Input { path, location, rank: Some(r), detail }
            }
            other => other,
        }
    }
}

impl From<arrow_schema::ArrowError> for Error {
    fn from(e: arrow_schema::ArrowError) -> Self {
        Error::Arrow(e)
    }
}

#[cfg(feature = "parquet")]
impl From<parquet::errors::ParquetError> for Error {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Error::Parquet(e)
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
