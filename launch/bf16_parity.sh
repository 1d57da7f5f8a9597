#!/usr/bin/env bash
# bf16-vs-fp32 parity at full knee size (docs/memory-and-speed.md): simulate knee volumes at 15x640x368, train the same recipe
# in fp32 and in bf16 (identical seed, data order, masks), and once more in fp32 with another run.seed (how far
# two fp32 runs differ: the noise floor a bf16 difference must be read against); then the comparison report.
#
#   launch/bf16_parity.sh [extra key=value overrides...]
#
# Default model: 4 cascades, chans 12 (about 35 min on a 2-core CPU with two runs side by side, 1 thread each).
# On a GPU, pass the default VarNet: model.num_cascades=12 model.chans=18 model.sens_chans=8 model.sens_pools=4
# Output: ${OUT:-runs/parity}/{fp32,bf16,fp32_seed43,report/report.md}.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/parity}
PY=${PY:-.venv/bin/python}
D=$OUT/data
export WANDB_MODE=${WANDB_MODE:-disabled}
if [ ! -f "$D/.done" ]; then
  "$PY" -m varnet_ds.sim.synth knee --out "$D/train" --volumes 4 --slices 8 --seed 1
  "$PY" -m varnet_ds.sim.synth knee --out "$D/val" --volumes 2 --slices 6 --seed 2
  touch "$D/.done"
fi
train() {  # folder, then overrides
  local dir=$1; shift
  "$PY" varnet_ds/train.py --config demo --ds_config ds_configs/zero2.json run.name="parity-$dir" \
    run.out_dir="$OUT/$dir" data.train_path="$D/train" data.val_path="$D/val" data.transfer_path=null \
    model.num_cascades=4 model.chans=12 model.pools=4 model.sens_chans=4 model.sens_pools=3 \
    train.epochs=4 train.lr=0.001 train.lr_step_size=100 eval.every_epochs=2 \
    eval.accelerations=[4] eval.center_fractions=[0.08] "$@" > "$OUT/$dir.log" 2>&1
}
train fp32 train.precision=fp32 "$@"
train bf16 train.precision=bf16 "$@"
train fp32_seed43 train.precision=fp32 run.seed=43 "$@"
"$PY" analysis/compare.py "$OUT/fp32" "$OUT/bf16" "$OUT/fp32_seed43" --labels fp32 bf16 fp32_seed43 \
  --out "$OUT/report"
grep -A4 "^## Key results" "$OUT/report/report.md"
