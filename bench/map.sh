#!/usr/bin/env bash
# issue 10: the map stage on pyarrow-written input beside an mpi4py + pyarrow script doing
# the same work, the hardware limit, and the Parquet scan at 1, 2 and 4 ranks: every
# figure measured in the same invocation, the peers and gang alternating in every round.
#
#   bench/map.sh [ROUNDS]     (default 3; the table gives best and median ratios)
#
# Input (bench/gen_pyarrow.py): 2,000,000 rows x 32 float32 + int8 y, 8 files (snappy, no
# dictionary, one row group each), and the same rows as one file with pyarrow's default
# row groups (2). Needs mpi4py in the Python ($GANG_TEST_PYTHON; ./dev bench installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_mpi_yield_when_idle=1
PY="${GANG_TEST_PYTHON:-python3}"
cargo build --release -q -p gang-launcher -p gang-bench -p gang
G=target/release/gang
B=target/release/data-bench
W=bench/build/map
mkdir -p "$W" bench/results
RUN="--run-dir bench/build/runs --no-tag-output"
[ -f "$W/in8/part-00007.parquet" ] || "$PY" bench/gen_pyarrow.py "$W/in8" 2000000 8
[ -f "$W/in1/part-00000.parquet" ] || "$PY" bench/gen_pyarrow.py "$W/in1" 2000000 1
OUT="$W/figures.json"
# The scans write beside OUT: every figure of this invocation, none of an earlier one.
rm -f "$OUT" "$OUT.in8" "$OUT.in1"
now() { date +%s.%N; }
fig() { echo "{\"bench\": \"$1\", \"ranks\": $2, \"rows\": 2000000, \"bytes\": 0, \"seconds\": $3}" >> "$OUT"; }
for r in $(seq "$ROUNDS"); do
    echo "round $r/$ROUNDS" >&2
    for n in 1 2; do
        # Both start with no output of an earlier round (removing 256 MB of old files is
        # not the map's work) and with the page cache's dirty data written back.
        rm -rf "$W/peer-out"
        sync
        t=$(now); mpirun --oversubscribe -n $n "$PY" bench/peer_map.py "$W/in8" "$W/peer-out" "$OUT" >/dev/null
        fig map-peer-whole $n "$(echo "$(now) - $t" | bc)"
        rm -rf "$W/peer-out" "$W/gang-out"
        sync
        t=$(now)
        line=$($G standardize -n $n $RUN --input "$W/in8" --output "$W/gang-out" --overwrite | grep committed)
        fig map-gang-whole $n "$(echo "$(now) - $t" | bc)"
        fig map-gang $n "$(echo "$line" | sed -E 's/.* in ([0-9.]+) s.*/\1/')"
        bytes=$(du -sb "$W/gang-out" | cut -f1)
        $G run -n $n $RUN -- $B scan-raw "$W/in8" "$OUT" >/dev/null
        mpirun --oversubscribe -n $n "$PY" bench/pyarrow_scan.py "$W/in8" "$OUT" >/dev/null
        $G run -n $n $RUN -- $B write-plain "$bytes" "$W/plain" "$OUT" >/dev/null
    done
    for n in 1 2 4; do
        for input in in8 in1; do
            $G run -n $n $RUN -- $B scan-raw "$W/$input" "$OUT.$input" >/dev/null
            $G run -n $n $RUN -- $B scan-gang "$W/$input" "$OUT.$input"
            mpirun --oversubscribe -n $n "$PY" bench/pyarrow_scan.py "$W/$input" "$OUT.$input" >/dev/null
        done
    done
done
# gang's output, read by pyarrow, holds the same values as the script's (2 ranks).
mpirun --oversubscribe -n 2 "$PY" bench/peer_map.py "$W/in8" "$W/peer-out" >/dev/null
"$PY" - "$W/gang-out" "$W/peer-out" <<'PYEOF'
import glob, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
g = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(sys.argv[1] + "/part-*.parquet"))])
p = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(sys.argv[2] + "/*.parquet"))])
assert g.num_rows == p.num_rows and g.schema.names == p.schema.names, "different shapes"
same = all(np.array_equal(g.column(c).to_numpy(), p.column(c).to_numpy()) for c in g.schema.names)
print(f"output check: pyarrow reads {g.num_rows} rows of gang's output, values "
      + ("identical to the script's" if same else "DIFFERENT from the script's"), file=sys.stderr)
sys.exit(0 if same else 1)
PYEOF
rm -rf "$W/peer-out"
"$PY" - "$OUT" <<'PYEOF' | tee bench/results/map.md
import json, statistics, sys
base = sys.argv[1]
def load(path):
    rounds = {}
    for line in open(path):
        f = json.loads(line)
        rounds.setdefault((f["bench"], f["ranks"]), []).append(f["seconds"])
    return rounds
m = load(base)
def ratios(a, b):
    r = [x / y for x, y in zip(a, b)]
    return min(r), statistics.median(r)
print("| figure | ranks | gang (best / median) | against | ratio min / median of the rounds | target |")
print("|---|---:|---:|---|---:|---|")
for n in (1, 2):
    for what, g, p in (("map stage", "map-gang", "map-peer"), ("whole command", "map-gang-whole", "map-peer-whole")):
        gs, ps = m[(g, n)], m[(p, n)]
        b, md = ratios(ps, gs)
        print(f"| {what} | {n} | {min(gs):.3f} / {statistics.median(gs):.3f} s | mpi4py+pyarrow {min(ps):.3f} / {statistics.median(ps):.3f} s | peer/gang {b:.2f}x / {md:.2f}x | gang 1.5x faster at 2 ranks |")
    read = [min(a, b) for a, b in zip(m[("scan-raw", n)], m[("scan-pyarrow", n)])]
    lim = [a + b for a, b in zip(read, m[("write-plain", n)])]
    b, md = ratios(m[("map-gang", n)], lim)
    print(f"| map stage vs limit | {n} | {min(m[('map-gang', n)]):.3f} s | read (faster of arrow-rs loop, pyarrow) + plain write with fsync: {min(lim):.3f} / {statistics.median(lim):.3f} s | gang/limit {b:.2f}x / {md:.2f}x | within 1.5x |")
for inp, label in (("in8", "8 files"), ("in1", "1 file, 2 row groups")):
    s = load(base + "." + inp)
    for n in (1, 2, 4):
        lim = [min(a, b) for a, b in zip(s[("scan-raw", n)], s[("scan-pyarrow", n)])]
        b, md = ratios(s[("scan-gang", n)], lim)
        print(f"| Parquet scan, {label} | {n} | {min(s[('scan-gang', n)]):.3f} / {statistics.median(s[('scan-gang', n)]):.3f} s | faster of arrow-rs loop ({min(s[('scan-raw', n)]):.3f} s) and pyarrow ({min(s[('scan-pyarrow', n)]):.3f} s) per round | gang/limit {b:.2f}x / {md:.2f}x | within 1.15x |")
PYEOF
