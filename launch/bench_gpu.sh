#!/usr/bin/env bash
# Issue #8 on one GPU in one go (~5 min on an H100): the knee and brain_big memory/speed tables (reference,
# every policy in plain PyTorch and under ZeRO-2), the memory planner at 2 GiB, ZeRO-2 comms from the measured
# step. JSON + text go to ${OUT:-runs/bench-gpu}/. Paste the tables into README "Memory and speed".
#
#   launch/bench_gpu.sh            # uses $PY (default: python3 on PATH, e.g. the project's .venv)
#
# On a bare GPU machine without the packages, from wheels copied into .whl/ (see README "Development"):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
#   OUT=$OUT launch/bench_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-runs/bench-gpu}
mkdir -p "$OUT"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "bench_gpu.sh: no CUDA device here")'
run() {  # name, then bench arguments; JSON on stdout, the table re-rendered as text
  local name=$1; shift
  echo "== $name: python -m varnet_ds.bench $*" | tee -a "$OUT/tables.txt"
  "$PY" -m varnet_ds.bench "$@" > "$OUT/$name.txt" 2> "$OUT/$name.log" || { tail -20 "$OUT/$name.log"; exit 1; }
  cat "$OUT/$name.txt" | tee -a "$OUT/tables.txt"
}
run knee --shape knee --steps 10 --ds none zero2 --repeat-reference --augment-repeats 5 --comms
run brain_big --shape brain_big --steps 10 --ds none zero2 --precision bf16 --repeat-reference --no-augment
run plan_knee --shape knee --plan 2.0 --ds zero2 --steps 3
run plan_brain_big --shape brain_big --plan 3.0 --ds zero2 --steps 3
echo "tables: $OUT/tables.txt"
