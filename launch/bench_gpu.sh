#!/usr/bin/env bash
# The GPU benchmark set on one GPU (docs/memory-and-speed.md): the knee and brain_big memory/speed tables
# (reference, every policy under ZeRO-2, the plain-PyTorch rows the H100 reference figures were taken with,
# compiled U-Nets), the memory planner at 2 / 3 GiB and ZeRO-2 comms from the measured step. Tables, JSON documents
# and logs go to ${OUT:-runs/bench-gpu}/; record tables.txt as a new dated log under docs/measurements/ (device,
# date, versions). Parts, so that each call fits a 10-minute device slot (H100, rough):
#
#   launch/bench_gpu.sh knee        # ~4 min: knee fp32+bf16 x every policy (ZeRO-2), plain rows, comms
#   launch/bench_gpu.sh brain_big   # ~3 min: brain_big bf16 x every policy (ZeRO-2)
#   launch/bench_gpu.sh compiled    # ~4 min: model.compile rows, knee and brain_big (first compile is slow)
#   launch/bench_gpu.sh plan        # ~2 min: the planner at 2.0 GiB (knee) and 3.0 GiB (brain_big)
#   launch/bench_gpu.sh             # all four
#
# Uses $PY (default: python3 on PATH, e.g. the project's .venv). On a bare GPU machine without the packages,
# from wheels copied into .whl/:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
#   OUT=$OUT launch/bench_gpu.sh knee
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:-all}
case $part in knee|brain_big|compiled|plan|all) ;; *) echo "bench_gpu.sh: unknown part '$part'" >&2; exit 2;; esac
PY=${PY:-python3}
OUT=${OUT:-runs/bench-gpu}
mkdir -p "$OUT"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "bench_gpu.sh: no CUDA device here")'
run() {  # name, then bench arguments
  local name=$1; shift
  echo "== $name: python -m varnet_ds.bench $*" | tee -a "$OUT/tables.txt"
  "$PY" -m varnet_ds.bench "$@" --json-out "$OUT/$name.json" > "$OUT/$name.txt" 2> "$OUT/$name.log" || { tail -20 "$OUT/$name.log"; exit 1; }
  tee -a "$OUT/tables.txt" < "$OUT/$name.txt"
}
ALL_POLICIES=(--checkpointing none cascades all selective selective_all --sens-chunk 0 4)
LEAN_POLICIES=(--checkpointing none cascades all selective_all --sens-chunk 4)
if [[ $part == knee || $part == all ]]; then
  run knee --shape knee --steps 10 --ds zero2 --precision fp32 bf16 "${ALL_POLICIES[@]}" --repeat-reference \
    --augment-repeats 5 --comms
  run knee_plain --shape knee --steps 10 --ds none --precision fp32 bf16 --checkpointing none cascades --no-augment
fi
if [[ $part == brain_big || $part == all ]]; then
  run brain_big --shape brain_big --steps 10 --ds zero2 --precision bf16 "${ALL_POLICIES[@]}" --repeat-reference \
    --no-augment
fi
if [[ $part == compiled || $part == all ]]; then
  run knee_compiled --shape knee --steps 10 --ds zero2 --precision bf16 "${LEAN_POLICIES[@]}" --compile --no-augment
  run brain_big_compiled --shape brain_big --steps 10 --ds zero2 --precision bf16 "${LEAN_POLICIES[@]}" --compile \
    --no-augment
fi
if [[ $part == plan || $part == all ]]; then
  run plan_knee --shape knee --plan 2.0 --ds zero2 --steps 2
  run plan_brain_big --shape brain_big --plan 3.0 --ds zero2 --steps 2
fi
echo "tables: $OUT/tables.txt"
