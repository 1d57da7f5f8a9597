#!/usr/bin/env bash
# The knee->brain study: baseline and MRAugment, identical except for aug.*, then the comparison report.
#
#   launch/knee2brain.sh KNEE_TRAIN KNEE_VAL BRAIN_VAL [NUM_GPUS] [extra key=value overrides...]
#
# Example: launch/knee2brain.sh /data/knee/multicoil_train /data/knee/multicoil_val /data/brain/multicoil_val 8
# Rerunning resumes both runs from their last checkpoints. Exit code 124 from a run means "preempted, rerun me".
# Runs go to $OUT/baseline and $OUT/mraugment (OUT defaults to runs/).
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,8p' "$0"; exit 2
fi
TRAIN=$(realpath "$1"); VAL=$(realpath "$2"); BRAIN=$(realpath "$3"); shift 3
cd "$(dirname "$0")/.."
OUT=${OUT:-runs}
PY=${PY:-.venv/bin/python}
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then NGPU=$1; shift; else
  NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count() or 2)')  # no GPU: 2 CPU ranks
fi
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per CPU rank
fi
DS=${DS:-$(dirname "$PY")/deepspeed}
DS_CONFIG=${DS_CONFIG:-ds_configs/zero2.json}
for arm in baseline mraugment; do
  "$DS" --num_gpus "$NGPU" varnet_ds/train.py --ds_config "$DS_CONFIG" --config "varnet_ds/conf/$arm.yaml" \
    data.train_path="$TRAIN" data.val_path="$VAL" data.transfer_path="$BRAIN" run.out_dir="$OUT/$arm" "$@"
done
"$PY" analysis/compare.py "$OUT/baseline" "$OUT/mraugment" --labels baseline mraugment --out "$OUT/knee2brain-report"
echo "report: $OUT/knee2brain-report/report.html"
