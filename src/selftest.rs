//! A self-checking run of every collective, on whatever backend a communicator has.
//!
//! Each rank computes, on its own, what every collective must return from the inputs all
//! ranks are known to pass, and compares. It is what `gang selftest -n N` runs on a cluster
//! to check that gang and its MPI work there, what the tests run on the Local backend at
//! N = 1..4 and under mpirun at N = 2 and 4, and, with a small [`Comm::set_max_count`](crate::Comm::set_max_count),
//! how the splitting of large buffers is checked.

use crate::comm::{Comm, RankBuffers, ReduceOp, Scalar};
use crate::error::{Error, Result};

/// What a self-test checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelftestReport {
    /// Number of collectives whose results were checked.
    pub checks: usize,
    /// The limit on one underlying call that was in force.
    pub max_count: usize,
}

/// Deterministic bytes for `(seed, len)`.
pub fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| ((seed * 31 + k * 7 + seed / 3) % 251) as u8).collect()
}

fn fail(what: String) -> Error {
    Error::External(format!("selftest: {what}").into())
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: &[T], want: &[T]) -> Result<()> {
    if got.len() != want.len() {
        return Err(fail(format!("{what}: got {} elements, expected {}", got.len(), want.len())));
    }
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        return Err(fail(format!("{what}: element {i} is {:?}, expected {:?}", got[i], want[i])));
    }
    Ok(())
}

/// Runs every collective of `comm` with known inputs and checks every result on this rank.
///
/// # Errors
/// The first wrong result, naming the collective, type, operator and element; or the
/// communication error that stopped it.
pub fn selftest(comm: &Comm) -> Result<SelftestReport> {
    let (rank, n) = (comm.rank(), comm.size());
    let max_count = comm.max_count();
    let mut checks = 0;

    comm.barrier()?;
    checks += 1;

    // Broadcast from every root, with lengths around the chunk limit.
    for root in 0..n {
        for len in [0, 1, max_count.min(64) + 3, 100] {
            let want: Vec<f64> = (0..len).map(|i| (root * 1000 + i) as f64).collect();
            let mut buf: Vec<f64> = if rank == root { want.clone() } else { vec![-1.0; len] };
            comm.broadcast(root, &mut buf)?;
            expect_eq(&format!("broadcast<f64> from {root}, {len} elements"), &buf, &want)?;
            checks += 1;
        }
        let want = pattern(root, 1000 + root);
        let mut buf = if rank == root { want.clone() } else { pattern(99, rank * 3) };
        comm.broadcast_bytes(root, &mut buf)?;
        expect_eq(&format!("broadcast_bytes from {root}"), &buf, &want)?;
        checks += 1;
    }

    // Allreduce: every type with every operator it supports, in place and into.
    let len = 37;
    checks += check_allreduce(comm, len, |r, i| ((r + 1) * (i % 5 + 1)) as f32)?;
    checks += check_allreduce(comm, len, |r, i| ((r * 7 + i) % 13) as f64 - 6.0)?;
    checks += check_allreduce(comm, len, |r, i| (r as i64 - 2) * (i as i64 + 1))?;
    checks += check_allreduce(comm, len, |r, i| (r as u64) << (i % 40))?;
    checks += check_allreduce(comm, len, |r, i| (r + i) % 3 != 0)?;
    checks += check_allreduce(comm, len, |r, i| r == i % n.max(1))?;

    // Allgather of buffers of different lengths (one rank sends nothing).
    let len_of = |r: usize| if r == 1 { 0 } else { r * 13 + 5 };
    let got = comm.allgather_bytes(&pattern(rank, len_of(rank)))?;
    let want = RankBuffers::from_parts(&(0..n).map(|r| pattern(r, len_of(r))).collect::<Vec<_>>());
    if got != want {
        return Err(fail(format!(
            "allgather_bytes: rank {rank} received {:?}",
            got.iter().map(<[u8]>::len).collect::<Vec<_>>()
        )));
    }
    checks += 1;
    // A larger one.
    // Large against the chunk limit (many rounds when it is small), 100 kB otherwise.
    let big = |r: usize| 100_000usize.min(40 * max_count + 13) + r * 1001;
    let got = comm.allgather_bytes(&pattern(rank + 7, big(rank)))?;
    for r in 0..n {
        expect_eq(&format!("allgather_bytes (large) part {r}"), got.get(r), &pattern(r + 7, big(r)))?;
    }
    checks += 1;

    // All-to-all: part j of rank i has length (7i + 3j) % 11 and content pattern(i*n + j).
    let part_len = |i: usize, j: usize| (7 * i + 3 * j) % 11;
    let send = RankBuffers::from_parts(&(0..n).map(|j| pattern(rank * n + j, part_len(rank, j))).collect::<Vec<_>>());
    let got = comm.all_to_all_bytes(&send)?;
    for i in 0..n {
        expect_eq(&format!("all_to_all_bytes part from {i}"), got.get(i), &pattern(i * n + rank, part_len(i, rank)))?;
    }
    checks += 1;
    let big_part = |i: usize, j: usize| 20_000usize.min(20 * max_count + 7) + 100 * i + j;
    let send = RankBuffers::from_parts(&(0..n).map(|j| pattern(rank + j, big_part(rank, j))).collect::<Vec<_>>());
    let got = comm.all_to_all_bytes(&send)?;
    for i in 0..n {
        expect_eq(
            &format!("all_to_all_bytes (large) part from {i}"),
            got.get(i),
            &pattern(i + rank, big_part(i, rank)),
        )?;
    }
    checks += 1;

    // Split: even and odd ranks, each ordered by descending rank (key = -rank); with three
    // ranks or more the last rank takes part without a color and gets no communicator.
    let opt_out = n >= 3 && rank == n - 1;
    let color = (!opt_out).then_some((rank % 2) as u32);
    let sub = comm.split(color, -(rank as i32))?;
    match (sub, opt_out) {
        (None, true) => {}
        (Some(sub), false) => {
            let members: Vec<usize> = (0..n).filter(|&r| r % 2 == rank % 2 && !(n >= 3 && r == n - 1)).rev().collect();
            let want_rank = members.iter().position(|&r| r == rank).expect("a member");
            if (sub.rank(), sub.size(), sub.max_count()) != (want_rank, members.len(), max_count) {
                return Err(fail(format!(
                    "split: rank {rank} became {} of {} (max count {}), expected {want_rank} of {} ({max_count})",
                    sub.rank(),
                    sub.size(),
                    sub.max_count(),
                    members.len()
                )));
            }
            // Collectives on the new communicator involve its members only.
            let sum = sub.allreduce_scalar(rank as u64, ReduceOp::Sum)?;
            expect_eq("allreduce on a split", &[sum], &[members.iter().map(|&r| r as u64).sum::<u64>()])?;
            let names = sub.allgather_bytes(&(rank as u64).to_le_bytes())?;
            let got: Vec<u64> = names.iter().map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
            expect_eq(
                "allgather on a split (in key order)",
                &got,
                &members.iter().map(|&r| r as u64).collect::<Vec<_>>(),
            )?;
        }
        (Some(_), true) => return Err(fail(format!("split: rank {rank} passed no color but got a communicator"))),
        (None, false) => return Err(fail(format!("split: rank {rank} passed a color but got no communicator"))),
    }
    checks += 1;

    comm.barrier()?;
    checks += 1;
    Ok(SelftestReport { checks, max_count })
}

fn check_allreduce<T: Scalar>(comm: &Comm, len: usize, value: impl Fn(usize, usize) -> T) -> Result<usize> {
    let (rank, n) = (comm.rank(), comm.size());
    let mut checks = 0;
    for op in [ReduceOp::Sum, ReduceOp::Min, ReduceOp::Max, ReduceOp::And, ReduceOp::Or] {
        if !T::supports(op) {
            continue;
        }
        let want: Vec<T> =
            (0..len).map(|i| (1..n).fold(value(0, i), |acc, r| T::combine(acc, value(r, i), op))).collect();
        let mine: Vec<T> = (0..len).map(|i| value(rank, i)).collect();
        let mut buf = mine.clone();
        comm.allreduce(&mut buf, op)?;
        expect_eq(&format!("allreduce {op:?} over {}", T::NAME), &buf, &want)?;
        let mut out = vec![value(n + 5, 0); len];
        comm.allreduce_into(&mine, &mut out, op)?;
        expect_eq(&format!("allreduce_into {op:?} over {}", T::NAME), &out, &want)?;
        expect_eq(
            &format!("allreduce_into {op:?} over {} left send alone", T::NAME),
            &mine,
            &(0..len).map(|i| value(rank, i)).collect::<Vec<_>>(),
        )?;
        checks += 2;
    }
    Ok(checks)
}
