#!/usr/bin/env bash
# Layout and serving figures on the 2M-node synthetic graph (fanouts 10,10, batch 1024, 1 epoch).
# Usage: tools/bench_layout.sh [STORE]   -> STORE/layout-results.jsonl
set -euo pipefail
S=${1:-/work/bench-stores/synth2m}
BIN=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
F="$BIN/featdb"
[ -d "$S/catalog" ] || "$F" synth "$S" --nodes 2000000 --avg-degree 15 --dim 128 --classes 16 --seed 0 -q
"$F" info "$S" --json | grep -q '"name": "f1010"' || \
  "$F" sample "$S" --name f1010 --fanouts 10,10 --batch-size 1024 --epochs 1 -q
OUT="$S/layout-results.jsonl"; : > "$OUT"
TABLE=$((2000000 * 512))
for host in 0 10 30; do
  for cap in none 5 3 2; do
    capopt=(); [ "$cap" = none ] || capopt=(--max-blowup "$cap")
    "$F" pack "$S" --sample-set f1010 --host-cache $((TABLE * host / 100)) "${capopt[@]}" --dry-run --json \
      | "$BIN/python" -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'host_pct': $host, 'cap': '$cap', 'blowup': d['blowup'], 'predicted_amplification': d['predicted_amplification'], 'segment_len': d['segment_len'], 'hit_rate': d['predictions']['hit_rate']}))" \
      | tee -a "$OUT"
  done
done
for cap in none 3; do
  capopt=(); [ "$cap" = none ] || capopt=(--max-blowup "$cap")
  "$F" pack "$S" --sample-set f1010 --host-cache $((TABLE / 10)) "${capopt[@]}" -q
  "$F" bench serve "$S" --json | "$BIN/python" -c "import json,sys; d=json.load(sys.stdin); d.pop('stats'); d['cap']='$cap'; print(json.dumps(d))" | tee -a "$OUT"
  "$F" gc "$S" -q
done
