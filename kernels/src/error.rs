//! The one error type of this crate.

use std::fmt;

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a kernel call.
///
/// Kernels check their inputs before they touch any output buffer, so a call that
/// returns an error has left the gradient, parameter and optimizer buffers unchanged.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A buffer's length does not match the shape the model or optimizer expects.
    Shape {
        /// Which buffer (`"x"`, `"y"`, `"grad"`, `"params"`, ...).
        what: &'static str,
        /// The length the call needed.
        expected: usize,
        /// The length it was given.
        actual: usize,
    },
    /// A row-major matrix buffer whose length is not a whole number of rows.
    Ragged {
        /// Which buffer (`"x"`).
        what: &'static str,
        /// Its length.
        len: usize,
        /// The row width it must be a multiple of (the model's features).
        width: usize,
    },
    /// A class label outside `0..classes`.
    Label {
        /// Row of the batch (0-based) holding the label.
        row: usize,
        /// The offending label.
        label: i64,
        /// Number of classes of the model (labels must be in `0..classes`).
        classes: usize,
    },
    /// A value target that the loss cannot take (not finite, or outside `[0, 1]` for
    /// a binary model).
    Target {
        /// Row of the batch (0-based) holding the target.
        row: usize,
        /// The offending value.
        value: f32,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The kind of [`Targets`](crate::Targets) does not fit the model's head
    /// (e.g. float values given to a softmax classifier).
    TargetKind {
        /// The model's head: `"regression"`, `"binary"` or `"softmax"`.
        head: &'static str,
        /// The targets given: `"class"` or `"value"`.
        targets: &'static str,
    },
    /// An operation that needs a classifier was called on a regression model.
    NotClassifier,
    /// The model description is invalid (zero features, fewer than 2 classes, ...).
    InvalidModel {
        /// What is wrong.
        reason: String,
    },
    /// An optimizer hyper-parameter is invalid (negative learning rate, beta >= 1, ...).
    InvalidOptimizer {
        /// What is wrong.
        reason: String,
    },
    /// Optimizer state given to [`OptimizerState::from_state`](crate::OptimizerState::from_state)
    /// does not match the optimizer (missing or unexpected tensor, wrong length).
    InvalidState {
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape { what, expected, actual } => write!(f, "`{what}` has length {actual}, expected {expected}"),
            Error::Ragged { what, len, width } => {
                write!(f, "`{what}` has length {len}, which is not a whole number of rows of {width}")
            }
            Error::Label { row, label, classes } => {
                write!(f, "label {label} in row {row} is outside 0..{classes} (the model has {classes} classes)")
            }
            Error::Target { row, value, reason } => {
                write!(f, "target {value} in row {row}: {reason}")
            }
            Error::TargetKind { head, targets } => write!(f, "a {head} model cannot be trained on {targets} targets"),
            Error::NotClassifier => f.write_str("a regression model has no classes to predict"),
            Error::InvalidModel { reason } => write!(f, "invalid model: {reason}"),
            Error::InvalidOptimizer { reason } => write!(f, "invalid optimizer: {reason}"),
            Error::InvalidState { reason } => write!(f, "invalid optimizer state: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// The same error with its row number counted `by` rows later (a check of a range of
    /// rows that starts at row `by`).
    pub(crate) fn shift_row(self, by: usize) -> Error {
        match self {
            Error::Label { row, label, classes } => Error::Label { row: row + by, label, classes },
            Error::Target { row, value, reason } => Error::Target { row: row + by, value, reason },
            other => other,
        }
    }
}
