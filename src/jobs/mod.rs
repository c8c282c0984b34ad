//! The logic of the built-in jobs (`gang gen`, `gang stats`, ...), run by `gang-rank`;
//! pure functions over Arrow batches, unit-tested here, wired to data and output in
//! `src/bin/gang-rank.rs`.

pub mod gen;
pub mod standardize;
pub mod stats;
