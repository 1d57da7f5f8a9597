"""A preemption signal that arrives during an evaluation (2 real DeepSpeed CPU ranks): the ranks agree before the
next evaluation batch, abandon it, checkpoint with the evaluation pending and exit 75; the rerun does that evaluation
first and every evaluation and step ends up logged exactly once.

Two 2-rank starts as SLURM's srun makes them (``tests/srun_ranks.sh``; ``launch/slurm.sbatch`` is where preemption
happens): the interrupted run (SIGTERM to rank 0 only, once rank 0 announced the first evaluation) and its rerun.
The evaluation is made long enough to be caught (the 3 train volumes as knee val, 4 acceleration passes per split).
"""

import signal
from collections import Counter

import psutil
import pytest
from trainrun import common, finish, rows_of, start, tail, wait_until

pytestmark = pytest.mark.slow

PAIRS = ["eval.center_fractions=[0.08,0.04,0.08,0.04]", "eval.accelerations=[4,8,4,8]"]


def test_signal_during_evaluation_abandons_it_and_the_rerun_evaluates_first(synth_dirs, tmp_path):
    dirs = {**synth_dirs, "val": synth_dirs["train"]}
    args = common(dirs, tmp_path / "run", "train.epochs=2", "eval.every_epochs=1", *PAIRS,
                  "train.checkpoint_every_steps=100")
    log, marker = tmp_path / "a.txt", tmp_path / "job.preempted"
    proc = start(args, log, launcher=False, VARNET_DS_PREEMPT_MARKER=str(marker))
    wait_until(lambda: "evaluating val_knee" in log.read_text(), proc)
    rank0 = [p for p in psutil.Process(proc.pid).children(recursive=True) if "--local_rank=0" in " ".join(p.cmdline())]
    assert len(rank0) == 1, rank0
    rank0[0].send_signal(signal.SIGTERM)
    assert finish(proc, 150) == 75, tail(proc)
    rows = rows_of(tmp_path / "run")
    (preempted,) = [r for r in rows if r.get("event") == "preempted"]
    # after epoch 0 (steps 1-5; the epoch counter already advanced), before any evaluation row was written
    assert (preempted["step"], preempted["epoch"], preempted["pending_eval"]) == (5, 1, True), preempted
    assert not [r for r in rows if r["split"] in ("val_knee", "val_brain")]
    assert marker.read_text().strip().endswith(preempted["tag"])  # launch/slurm.sbatch requeues on this file

    proc = start(args, tmp_path / "b.txt", launcher=False)
    assert finish(proc, 200) == 0, tail(proc)
    rows = rows_of(tmp_path / "run")
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 11))
    for split in ("val_knee", "val_brain"):
        overall = [r for r in rows if r["split"] == split and "acquisition" not in r and "acceleration" not in r]
        assert [(r["step"], r["epoch"]) for r in overall] == [(5, 0), (10, 1)], split  # epoch of the weights
        per_step = Counter(r["step"] for r in rows if r["split"] == split)
        assert per_step[5] == per_step[10], per_step  # whole evaluations only
    (resume,) = [r for r in rows if r.get("event") == "resume"]
    assert resume["step"] == 5 and resume["tag"] == "step000000005"
    assert [r["step"] for r in rows if r.get("event") == "end"] == [10]
