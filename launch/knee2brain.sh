#!/usr/bin/env bash
# The knee->brain study: baseline and MRAugment, identical except for aug.*, then the comparison report.
#
#   launch/knee2brain.sh KNEE_TRAIN KNEE_VAL BRAIN_VAL [NUM_GPUS] [extra key=value overrides...]
#
# Example: launch/knee2brain.sh /data/knee/multicoil_train /data/knee/multicoil_val /data/brain/multicoil_val 8
# Rerunning resumes both runs from their last checkpoints. Exit code 124 from a run means "preempted, rerun me".
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,8p' "$0"; exit 2
fi
TRAIN=$1; VAL=$2; BRAIN=$3; NGPU=${4:-$(python3 -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
shift $(( $# >= 4 ? 4 : 3 ))
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DS=${DS:-$(dirname "$PY")/deepspeed}
DS_CONFIG=${DS_CONFIG:-ds_configs/zero2.json}
for arm in baseline mraugment; do
  "$DS" --num_gpus "$NGPU" varnet_ds/train.py --ds_config "$DS_CONFIG" --config "varnet_ds/conf/$arm.yaml" \
    data.train_path="$TRAIN" data.val_path="$VAL" data.transfer_path="$BRAIN" "$@"
done
"$PY" analysis/compare.py runs/baseline runs/mraugment --labels baseline mraugment --out runs/knee2brain-report
echo "report: runs/knee2brain-report/report.html"
