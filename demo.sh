#!/usr/bin/env bash
# gang's main job, step by step, as a gang of 4 ranks (what `./dev demo` runs after building).
# Every step is a plain `gang` command; the data lands under .gang/demo/.
set -euo pipefail
cd "$(dirname "$0")"
G="${GANG:-target/release/gang}"
N="${N:-4}"
D=.gang/demo
step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "${*:2}" >&2; "${@:2}"; }

step "1. the gang meets: barrier, allreduce, what every rank saw" \
    "$G" hello -n "$N"
step "2. generate 2,000,000 rows x 32 features (binary labels from a known model), 8 Parquet files" \
    "$G" gen -n "$N" --rows 2000000 --features 32 --classes 2 --partitions 8 --output "$D/data" --overwrite
step "3. statistics of every column, combined across the ranks" \
    "$G" stats -n "$N" --input "$D/data" --columns f0,f1,f2,f3,y
step "4. map stage: standardize the 32 features with those statistics, committed exactly once" \
    "$G" standardize -n "$N" --input "$D/data" --output "$D/standardized" --overwrite
step "5. the standardized features: mean 0, std 1" \
    "$G" stats -n "$N" --input "$D/standardized" --columns f0,f1,f2,f3,y
printf '\n\033[1m== done\033[0m: %s (manifest: %s/_SUCCESS)\n' "$D/standardized" "$D/standardized" >&2
