#!/usr/bin/env bash
# Training benchmarks (issue 4), every figure beside its limit:
#   epoch time of logistic regression and MLP(64) (Adam, batch 8192) on 2,000,000 x 32 f32
#     at 1 and 2 ranks, beside the floor max(x bytes / memory bandwidth, FLOPs / peak FLOP/s),
#     both measured here (bench/train_bench.rs `probe`, bench/c/fma_peak.c); allreduce share;
#   checkpoint save of 256 MB (1/4 replicated, 3/4 sharded) beside the faster of two plain
#     sequential writes + fsync of the same bytes to the same directory (one stream; with
#     write-back started every 32 MiB, as the checkpoint writer does);
#   failure-to-resume latency (rank 1 SIGKILLed at step 45, `--max-restarts 1
#     --restart-backoff 0`, 256 MB checkpoint of step 40) beside 2 s + the checkpoint read time
#     (restore of that checkpoint on its own, in a fresh gang).
#
#   bench/train.sh [ROUNDS]     (default 3; best round of each figure, median for latency;
#                                epochs also against each round's own limits)
# Writes bench/results/train.md and prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
PY="${GANG_TEST_PYTHON:-python3}"

cargo build --release -q -p gang-launcher -p gang-bench -p gang
G=target/release/gang
B=target/release/train-bench
W=bench/build/train
mkdir -p "$W" bench/results
cc -O2 -march=native -pthread -o "$W/fma_peak" bench/c/fma_peak.c
cc -O2 -pthread -o "$W/sse_peak" bench/c/fma_peak.c
RUN="--run-dir bench/build/runs --no-tag-output"
if ! [ -f "$W/data/_SUCCESS" ]; then
    $G gen -n 2 $RUN --rows 2000000 --features 32 --partitions 8 --output "$W/data"
fi
OUT="$W/figures.json"
TIMES="$W/resume-times.json"
rm -f "$OUT" "$TIMES"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    echo "round $r/$ROUNDS" >&2
    echo "{\"bench\": \"round\", \"round\": $r}" >>"$OUT"
    for t in 1 2; do
        for p in fma_peak sse_peak; do
            echo "{\"bench\": \"peak\", \"probe\": \"$p\", $("$W/$p" "$t" | tr -d '{')" >>"$OUT"
        done
    done
    for n in 1 2; do
        $G run -n $n $RUN -- $B probe "$OUT"
        for m in logistic mlp:64; do
            $G run -n $n $RUN -- $B epoch "$m" "$W/data" 4 8192 "$OUT"
        done
        $G run -n $n $RUN -- $B ckpt "$W/ckpt" 256 3 "$OUT"
    done
    # Failure to resume: a fresh checkpoint directory and run directory each round.
    rm -rf "$W/resume"
    mkdir -p "$W/resume"
    GANG_FAULT="rank=1,step=45,kind=kill" $G run -n 2 --max-restarts 1 --restart-backoff 0 \
        --run-dir "$W/resume/runs" --no-tag-output -- \
        $B resume "$W/resume/ckpt" 256 50 20 "$W/resume/times.json" 2>&1 | grep '^gang:' >&2 || true
    "$PY" - "$W/resume/times.json" "$r" >>"$TIMES" <<'PYEOF'
import glob, json, os, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
kill = next(e for e in ev if e["event"] == "kill")
start = next(e for e in ev if e["event"] == "start" and e["attempt"] == 1)
rec = lambda a, kind: [json.load(open(p)) for p in glob.glob(os.path.join(start["run_dir"], f"attempt-{a}", "ranks", f"*.{kind}.json"))]
print(json.dumps({
    "round": int(sys.argv[2]), "resumed_from": start["resumed_from"], "t_kill": kill["t_ns"],
    "t_gang_down": max(x["time_unix_ns"] for x in rec(0, "exit")),
    "t_relaunched": min(x["time_unix_ns"] for x in rec(1, "start")),
    "t_process": start["t_process_ns"], "t_init": start["t_init_ns"], "t_restored": start["t_restored_ns"],
    "t_first_step": start["t_first_step_ns"], "restore_in_run": start["restore_seconds"],
}))
PYEOF
    # The checkpoint read time: the same checkpoint restored on its own by a fresh gang.
    $G run -n 2 $RUN -- $B restore "$W/resume/ckpt" 3 "$OUT"
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

"$PY" - "$OUT" "$TIMES" "$ROUNDS" "$LOAD_BEFORE" "$LOAD_AFTER" <<'PYEOF' | tee bench/results/train.md
import json, statistics, subprocess, sys
figs = []
rnd = 0
for line in open(sys.argv[1]):
    f = json.loads(line)
    if f["bench"] == "round":
        rnd = f["round"]
        continue
    f["round"] = rnd
    figs.append(f)
times = [json.loads(l) for l in open(sys.argv[2])]
rounds, load_before, load_after = sys.argv[3:6]
def best(rows, key, hi=False):
    return (max if hi else min)(rows, key=lambda f: f[key])
peak = {(f["probe"], f["threads"]): best([g for g in figs if g["bench"] == "peak" and g["probe"] == f["probe"] and g["threads"] == f["threads"]], "gflops", True)["gflops"] for f in figs if f["bench"] == "peak"}
probe = {n: best([f for f in figs if f["bench"] == "probe" and f["ranks"] == n], "read_gbs", True) for n in (1, 2)}
blocks = {n: max(f["blocks_gbs"] for f in figs if f["bench"] == "probe" and f["ranks"] == n) for n in (1, 2)}
cpu = subprocess.run("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2", shell=True, capture_output=True, text=True).stdout.strip()
print(f"Machine: {cpu}, {subprocess.run('nproc', capture_output=True, text=True).stdout.strip()} cores; "
      f"{rounds} round(s); load average {load_before} before, {load_after} after (other builds may have been running).")
print()
print("Limits measured in this run (best round): memory read bandwidth "
      + ", ".join(f"{probe[n]['read_gbs']:.1f} GB/s at {n} rank(s) ({probe[n]['cores']} core(s))" for n in (1, 2))
      + "; the same read as 128 KiB blocks in random order (how `train` reads an epoch) "
      + ", ".join(f"{blocks[n]:.1f} GB/s at {n}" for n in (1, 2))
      + "; peak f32 " + ", ".join(f"{peak[('fma_peak', t)]:.0f} GFLOP/s on {t} core(s)" for t in (1, 2))
      + f" ({next(f['isa'] for f in figs if f['bench'] == 'peak' and f['probe'] == 'fma_peak')}, -march=native), "
      + ", ".join(f"{peak[('sse_peak', t)]:.0f}" for t in (1, 2))
      + " GFLOP/s with baseline x86-64 SSE, multiply and add not fused (gang's portable kernel build, "
      + "GANG_KERNELS=portable; the default build on this CPU is AVX2 + FMA, whose peak equals the AVX-512 one on "
      + "CPUs that split 512-bit operations in two).")
print()
print("| benchmark | ranks | figure | limit | ratio (target) |")
print("|---|---:|---:|---|---:|")
for model in ("logistic", "mlp:64"):
    for n in (1, 2):
        rows = [f for f in figs if f["bench"] == "epoch" and f["model"] == model and f["ranks"] == n and f["epoch"] >= 2]
        if not rows:
            continue
        e = best(rows, "seconds")
        cores = e["cores"]
        mem = e["x_bytes"] / (probe[n]["read_gbs"] * 1e9)
        comp = e["flops"] / (peak[("fma_peak", cores)] * 1e9)
        comp_built = e["flops"] / (peak[("sse_peak", cores)] * 1e9)
        floor = max(mem, comp)
        ratio = e["seconds"] / floor
        # The same ratio within each round, against the limits measured in that round:
        # this machine's speed drifts by tens of percent over minutes (shared host), and a
        # round's limits and epochs are measured minutes apart at most.
        per_round = []
        for r in sorted({f["round"] for f in rows}):
            rr = [f for f in rows if f["round"] == r]
            pr = max(f["read_gbs"] for f in figs if f["bench"] == "probe" and f["ranks"] == n and f["round"] == r)
            pk = max(f["gflops"] for f in figs if f["bench"] == "peak" and f["probe"] == "fma_peak" and f["threads"] == cores and f["round"] == r)
            per_round.append(min(f["seconds"] for f in rr) / max(e["x_bytes"] / (pr * 1e9), e["flops"] / (pk * 1e9)))
        per_round.sort()
        shares = [f["allreduce_share_mean"] for f in rows]
        print(f"| epoch, {model} ({e['flops_per_row']:.0f} FLOP/row, {e['steps']} steps of {e['batch']}) | {n} | "
              f"{e['seconds']:.3f} s ({e['flops']/e['seconds']/1e9:.1f} GFLOP/s, {e['x_bytes']/e['seconds']/1e9:.2f} GB/s of x); "
              f"allreduce {100*e['allreduce_share_mean']:.1f}% of the epoch (max over ranks {100*e['allreduce_share_max']:.1f}%, "
              f"median over epochs {100*statistics.median(shares):.1f}%) | "
              f"floor {floor:.3f} s = max({mem:.3f} s memory, {comp:.3f} s FMA peak on {cores} core(s)); "
              f"portable build: {comp_built:.3f} s compute; x read as shuffled blocks {e['x_bytes']/(blocks[n]*1e9):.3f} s | "
              f"best round {per_round[0]:.1f}x (2x: {'met' if per_round[0] <= 2 else 'NOT met'}), median round "
              f"{statistics.median(per_round):.1f}x; all rounds {', '.join(f'{x:.1f}x' for x in per_round)}; "
              f"best epoch over best floor of any round {ratio:.1f}x |")
for n in (1, 2):
    rows = [f for f in figs if f["bench"] == "ckpt" and f["ranks"] == n]
    if not rows:
        continue
    save = best(rows, "save_seconds")["save_seconds"]
    plain = best(rows, "plain_seconds")["plain_seconds"]
    ahead = best(rows, "plain_ahead_seconds")["plain_ahead_seconds"]
    disk = min(plain, ahead)
    mb = rows[0]["bytes"] / 1e6
    ratio = disk / save
    print(f"| checkpoint save, {mb:.0f} MB (1/4 replicated, 3/4 sharded) | {n} | {mb/save:.0f} MB/s ({save:.3f} s) | "
          f"disk bandwidth = the faster of two plain writes + fsync of the same bytes: {mb/plain:.0f} MB/s ({plain:.3f} s) "
          f"as one stream, {mb/ahead:.0f} MB/s ({ahead:.3f} s) with write-back started every 32 MiB as the checkpoint does | "
          f"{100*ratio:.0f}% (70%: {'met' if ratio >= 0.7 else 'NOT met'}) |")
    rs = best(rows, "restore_seconds")["restore_seconds"]
    print(f"| checkpoint restore, same checkpoint, warm page cache | {n} | {mb/rs:.0f} MB/s ({rs:.3f} s) | - | - |")
rest = [f for f in figs if f["bench"] == "restore"]
if times and rest:
    read_first = statistics.median(f["first_seconds"] for f in rest)
    lat = sorted(times, key=lambda t: t["t_first_step"] - t["t_kill"])
    t = lat[len(lat) // 2]
    s = lambda a, b: (t[b] - t[a]) / 1e9
    total = s("t_kill", "t_first_step")
    limit = 2.0 + read_first
    print(f"| failure to resume (kill of rank 1 at step 45 -> restarted gang restored step {t['resumed_from']} and took a step), "
          f"median of {len(times)} | 2 | {total:.2f} s (best {(lat[0]['t_first_step']-lat[0]['t_kill'])/1e9:.2f} s, worst {(lat[-1]['t_first_step']-lat[-1]['t_kill'])/1e9:.2f} s) | "
          f"2 s + restore on its own in a fresh gang ({read_first:.2f} s, median first restore) = {limit:.2f} s | "
          f"{total/limit:.2f}x ({'met' if total <= limit else 'NOT met'}) |")
    print()
    print(f"Failure-to-resume breakdown (median round): rank killed -> last rank of attempt 0 gone {s('t_kill','t_gang_down'):.2f} s; "
          f"-> attempt 1 ranks started {s('t_gang_down','t_relaunched'):.2f} s; -> rank program running {s('t_relaunched','t_process'):.2f} s; "
          f"-> MPI/gang init {s('t_process','t_init'):.2f} s; -> checkpoint restored {s('t_init','t_restored'):.2f} s; "
          f"-> first step {s('t_restored','t_first_step'):.2f} s.")
PYEOF
