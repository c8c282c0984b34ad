#!/usr/bin/env bash
# Barrier and f64 allreduce (8 B .. 64 MiB) through gang's Comm beside the same loops in C
# over raw MPI (the limit), both started by `gang run -n N` on this machine, alternating
# ROUNDS times; the best run of each side is compared.
#
#   bench/comm.sh [N] [ROUNDS]     (defaults: 2 ranks, 3 rounds)
# Writes bench/results/comm-<N>ranks.{md,json} and prints the table. With HOSTFILE set (an
# Open MPI hostfile; bench/cluster.sh sets it to one slot on each node of `./dev cluster`)
# both sides run across the nodes it lists, over TCP, and the files are named
# comm-<N>ranks-<TAG> (TAG: $TAG, default "hostfile").
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-2}"
ROUNDS="${2:-3}"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

cargo build --release -q -p gang-launcher -p gang-bench
mkdir -p bench/build bench/results
mpicc -O2 -o bench/build/raw_mpi_comm bench/c/raw_mpi_comm.c

GANG=target/release/gang
where=(-n "$N")
desc="$N ranks on one node (shared memory)"
out="bench/results/comm-${N}ranks"
if [ -n "${HOSTFILE:-}" ]; then
    where+=(--hostfile "$HOSTFILE")
    desc="$N ranks over the nodes of $HOSTFILE ($(awk '{print $1}' "$HOSTFILE" | sort -u | tr '\n' ' ')), TCP"
    out="$out-${TAG:-hostfile}"
fi
rm -f bench/build/comm-c.*.json bench/build/comm-gang.*.json
for r in $(seq "$ROUNDS"); do
    echo "round $r/$ROUNDS: raw MPI in C" >&2
    "$GANG" run "${where[@]}" --run-dir bench/build/runs -- bench/build/raw_mpi_comm "bench/build/comm-c.$r.json"
    echo "round $r/$ROUNDS: gang Comm" >&2
    "$GANG" run "${where[@]}" --run-dir bench/build/runs -- target/release/comm-bench run "bench/build/comm-gang.$r.json"
done

{
    echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
    echo "MPI: $(mpirun --version | head -1); $desc; $(date -u +%Y-%m-%d)"
    echo
    target/release/comm-bench compare --c bench/build/comm-c.*.json --gang bench/build/comm-gang.*.json --json "$out.json"
} | tee "$out.md"
