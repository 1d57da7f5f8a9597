#!/usr/bin/env bash
# Usage: tests/srun_ranks.sh N PORT PYTHON varnet_ds/train.py ARGS...
# N ranks on this machine, started the way launch/slurm.sbatch's srun line starts them: RANK, LOCAL_RANK,
# WORLD_SIZE, MASTER_ADDR and MASTER_PORT in each rank's environment, no DeepSpeed launcher (whose two Python
# processes cost ~7 s of CPU per 2-rank start on the 2-core box). --local_rank=R is appended as the DeepSpeed
# launcher does, so a test finds rank R by its command line. Exit code: the first non-zero one in rank order, else 0.
set -u
n=$1 port=$2
shift 2
pids=()
for ((r = 0; r < n; r++)); do
  RANK=$r LOCAL_RANK=$r WORLD_SIZE=$n MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$@" --local_rank=$r &
  pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do
  wait "$pid"
  code=$?
  if [ "$rc" -eq 0 ]; then rc=$code; fi
done
exit "$rc"
