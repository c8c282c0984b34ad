//! The Python the tests run (fixtures written by pyarrow and h5py, scikit-learn's
//! reference, files read back by numpy): `GANG_TEST_PYTHON` when set (`./dev test` points
//! it at a Python that has the packages, installing them into `.gang/pyenv` if the
//! system's lacks them), else `python3`.
#![allow(dead_code)]

use std::process::Command;

/// A command running the tests' Python.
pub fn python() -> Command {
    Command::new(std::env::var_os("GANG_TEST_PYTHON").unwrap_or_else(|| "python3".into()))
}
