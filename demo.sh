#!/usr/bin/env bash
# gang's main job, step by step, as gangs of 4 ranks (what `./dev demo` runs after building):
# generate, describe, standardize, train with a rank killed part-way, predict.
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
rm -rf "$D/checkpoints"
step "6. train logistic regression, data-parallel; rank 1 is killed at step 650 (GANG_FAULT): the launcher restarts the gang and training resumes from the newest checkpoint" \
    env GANG_FAULT="rank=1,step=650,kind=kill" "$G" train -n "$N" --max-restarts 2 --restart-backoff 0.5 \
    --input "$D/standardized" --label y --model logistic --epochs 5 --batch-size 8192 --lr 0.02 \
    --checkpoint-dir "$D/checkpoints" --checkpoint-every 200 --output "$D/model.safetensors"
step "7. the checkpoints it left" \
    "$G" ckpt ls "$D/checkpoints"
step "8. predict with the trained model: a map stage, exactly-once output" \
    "$G" predict -n "$N" --model "$D/model.safetensors" --input "$D/standardized" --output "$D/predictions" --overwrite
step "9. the predictions beside the labels" \
    "$G" stats -n "$N" --input "$D/predictions" --columns y,probability,prediction
printf '\n\033[1m== done\033[0m: data %s, model %s (loss curve %s), predictions %s\n' \
    "$D/standardized" "$D/model.safetensors" "$D/model.svg" "$D/predictions" >&2
