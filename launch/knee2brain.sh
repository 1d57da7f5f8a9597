#!/usr/bin/env bash
# The knee->brain study on real fastMRI data: baseline and MRAugment x seeds, each its own run, then the statistics
# (runs/<study>/report/study.json) and the comparison report. Drives python -m varnet_ds.study.
#
#   launch/knee2brain.sh KNEE_TRAIN KNEE_VAL BRAIN_VAL [GPUS_PER_RUN] [extra key=value overrides...]
#
# Example: launch/knee2brain.sh /data/knee/multicoil_train /data/knee/multicoil_val /data/brain/multicoil_val 8
# GPUS_PER_RUN (default: all GPUs) sets the packing: on 8 GPUs, 1 runs 8 runs side by side, 8 runs one ZeRO-2 run
# at a time. Rerunning skips finished runs and resumes killed ones. Environment: STUDY (default knee2brain), SEEDS
# (default "1 2 3"), OUT (default runs), DS_CONFIG (default ds_configs/zero2.json).
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,10p' "$0"; exit 2
fi
TRAIN=$(realpath "$1"); VAL=$(realpath "$2"); BRAIN=$(realpath "$3"); shift 3
cd "$(dirname "$0")/.."
OUT=${OUT:-runs}
PY=${PY:-.venv/bin/python}
STUDY=${STUDY:-knee2brain}
read -r -a SEED_LIST <<< "${SEEDS:-1 2 3}"
PACK=()
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then
  if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    PACK=(--gpus-per-run "$1")
  else
    PACK=(--parallel "$1")  # no GPU: that many 1-rank CPU runs side by side
  fi
  shift
fi
SETS=()
for kv in data.train_path="$TRAIN" data.val_path="$VAL" data.transfer_path="$BRAIN" "$@"; do SETS+=(--set "$kv"); done
# mraugment.yaml = baseline.yaml + aug.enabled=true and MRAugment's published settings: the arms differ in aug.* only.
"$PY" -m varnet_ds.study --name "$STUDY" --runs-dir "$OUT" --config varnet_ds/conf/baseline.yaml \
  --ds_config "${DS_CONFIG:-ds_configs/zero2.json}" --seeds "${SEED_LIST[@]}" \
  --arm baseline aug.enabled=false --arm mraugment aug.enabled=true "${PACK[@]}" "${SETS[@]}"
"$PY" analysis/compare.py "$OUT/$STUDY" --out "$OUT/$STUDY/report"
echo "study: $OUT/$STUDY/report/study.json   report: $OUT/$STUDY/report/report.html"
