#!/usr/bin/env bash
# Clean release build of the README's library example ("Writing a rank program") as a
# user's own crate depending on gang: with gang's default features (mpi, parquet, hdf5,
# cli) and with them off (the Local backend only). Each build starts from an empty target
# directory; wall-clock seconds on this machine.
#
#   bench/build_time.sh        prints a markdown table and writes bench/results/build-time.md
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The example, word for word from the README.
awk '/^## Writing a rank program/{f=1} f&&/^```rust$/{p=1;next} p&&/^```$/{exit} p' README.md > "$work/main.rs"
[ -s "$work/main.rs" ] || { echo "no example found in README.md" >&2; exit 1; }
row() {
    local name="$1" dep="$2" dir="$work/$1"
    mkdir -p "$dir/src"
    cp "$work/main.rs" "$dir/src/main.rs"
    cp "$root/Cargo.lock" "$dir/Cargo.lock"
    cat > "$dir/Cargo.toml" <<TOML
[package]
name = "readme-example"
version = "0.1.0"
edition = "2021"

[dependencies]
gang = $dep

[workspace]
TOML
    local t0 t1 crates
    t0=$(date +%s.%N)
    (cd "$dir" && CARGO_TARGET_DIR="$dir/target" cargo build --release -q)
    t1=$(date +%s.%N)
    crates=$(cd "$dir" && cargo tree -e normal --prefix none | sort -u | wc -l)
    printf '| %s | %.0f s | %s |\n' "$name" "$(echo "$t1 - $t0" | bc)" "$crates"
}
{
    echo "Clean release build of the README's rank program, $(nproc) cores, $(date -u +%Y-%m-%d)"
    echo
    echo "| gang dependency | wall clock | crates in the tree |"
    echo "|---|---|---|"
    row "default features" "{ path = \"$root\" }"
    row "default-features = false" "{ path = \"$root\", default-features = false }"
} | tee bench/results/build-time.md
