#!/usr/bin/env bash
# Large-table benchmarks: ingest RSS (>= 4 GB .npy) and packing time vs I/O floor.
# Usage: tools/bench_big.sh [DIR]   (needs ~20 GB free; results as JSON lines in DIR/results.jsonl)
set -euo pipefail
DIR=${1:-/work/bench-stores/big}
BIN=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
ROWS=8400000; DIM=128
mkdir -p "$DIR"; OUT="$DIR/results.jsonl"
[ -f "$DIR/src.npy" ] || "$BIN/python" "$(dirname "$0")/make_npy.py" "$DIR/src.npy" $ROWS $DIM
rm -rf "$DIR/ingest-store"
/usr/bin/time -v "$BIN/featdb" ingest "$DIR/ingest-store" node/x/feat "$DIR/src.npy" --memory-budget 256MiB --json \
  2> "$DIR/ingest.time" | tee -a "$OUT"
grep -E "Maximum resident|Elapsed" "$DIR/ingest.time"
rm -rf "$DIR/ingest-store"
rm -rf "$DIR/store"
"$BIN/featdb" synth "$DIR/store" --nodes $ROWS --dim $DIM --train-frac 0.01 --json | tee -a "$OUT"
"$BIN/featdb" sample "$DIR/store" --name e1 --fanouts 10,10 --batch-size 1024 --epochs 1 --json | tee -a "$OUT"
/usr/bin/time -v "$BIN/featdb" bench pack "$DIR/store" --sample-set e1 --host-cache 430MiB --memory-budget 1GiB --json \
  2> "$DIR/pack.time" | tee -a "$OUT"
grep -E "Maximum resident|Elapsed" "$DIR/pack.time"
