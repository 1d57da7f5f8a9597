"""Training across epoch boundaries on 2 real DeepSpeed ZeRO-2 CPU ranks: the per-epoch StepLR, one evaluation
per epoch, resume at and between epoch boundaries, rollback of rows written after the last checkpoint, and rank
agreement on a stop signal or a non-finite loss seen by one rank only.

Data: the session's 9 knee slices; 2 ranks x data.batch_size 1 give 5 steps per epoch (the 10th sample is
DistributedSampler's padding), so 3 epochs are steps 1-15 with boundaries after steps 5, 10 and 15.

Five 2-rank starts, each about 20-35 s of CPU. Only A goes through the ``deepspeed`` launcher (its kill -9 is about
the launcher ending the other rank); the others start the ranks as ``launch/slurm.sbatch``'s srun line does
(``tests/srun_ranks.sh``: RANK/LOCAL_RANK/WORLD_SIZE in the environment), so the chain also crosses from one way of
starting to the other:

- ``reference``: uninterrupted, 3 epochs, StepLR step 2 (lr decays for epoch 2), evaluation after every epoch,
  a checkpoint every 5 steps (= at every epoch boundary).
- ``chain``, the same command 3 times in one run folder with ``train.max_steps=10``, then extended:
  A. kill -9 of rank 1 only once a train row past the step-5 checkpoint is written (rows to roll back); the
     launcher takes rank 0 down;
  B. resumes exactly at the epoch boundary (checkpoint 5: end of epoch 0); SIGUSR1 to rank 1 only, mid-epoch 1:
     both ranks checkpoint the same step and exit 75 (requeue);
  C. resumes mid-epoch 1 and finishes at max_steps 10, the last step of epoch 1 (final evaluation, FINISHED);
  D. the same command without max_steps (a documented extension): resumes at that epoch boundary, must not score
     the step-10 weights again, and runs to the end; compared with ``reference`` bit for bit, every evaluation
     once and labelled with the epoch of the weights it scores, as in the uninterrupted run.
- ``test_nonfinite_loss_on_one_rank_is_skipped_by_both``: one NaN slice that only rank 1 trains on.
"""

import json
import shutil
import signal
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest
import torch
from trainrun import NO_EVAL, common, finish, rows_of, start, tail, wait_until

from varnet_ds.data.loader import EpochOrder

pytestmark = pytest.mark.slow

LR, GAMMA, STEP_SIZE, EPOCHS, STEPS_PER_EPOCH = 0.001, 0.5, 2, 3, 5
EPOCH_ARGS = [f"train.epochs={EPOCHS}", "eval.every_epochs=1", f"train.lr={LR}", f"train.lr_step_size={STEP_SIZE}",
              f"train.lr_gamma={GAMMA}", f"train.checkpoint_every_steps={STEPS_PER_EPOCH}"]
TIMING = ("time", "samples_per_s", "peak_mem_gib")  # differ between any two runs
SEED = 42  # run.seed of the demo config: the epoch's global sample order


def tag(step):
    return f"step{step:09d}"  # varnet_ds.trainer.checkpoint.tag_for


def complete_meta(run_dir, step):
    path = Path(run_dir) / "checkpoints" / tag(step) / "COMPLETE"
    return json.loads(path.read_text()) if path.is_file() else None


def weights(run_dir, name="model_fp32.pt"):
    return torch.load(Path(run_dir) / name, weights_only=False)["state_dict"]


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def reference(synth_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("epochs_reference")
    proc = start(common(synth_dirs, out / "run", *EPOCH_ARGS), out / "log.txt", launcher=False)
    assert finish(proc, 300) == 0, tail(proc)
    return out / "run"


@pytest.fixture(scope="module")
def chain(synth_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("epochs_chain")
    run = out / "run"
    args = common(synth_dirs, run, *EPOCH_ARGS, "train.max_steps=10")
    info = {"run": run}

    # A: kill -9 of rank 1 only (a lost node) after a train row past the step-5 checkpoint (end of epoch 0) was
    # written: the launcher takes the job down
    proc = start(args, out / "log_a.txt")
    wait_until(lambda: complete_meta(run, 5) is not None
               and any(r["split"] == "train" and r["step"] > 5 for r in rows_of(run)), proc)
    rank1 = [p for p in psutil.Process(proc.pid).children(recursive=True) if "--local_rank=1" in " ".join(p.cmdline())]
    assert len(rank1) == 1, rank1
    rank1[0].kill()
    assert finish(proc, 120) != 0, tail(proc)  # no hang: the launcher ends rank 0 too
    info["rows_at_kill"] = rows_of(run)
    info["boundary_meta"] = complete_meta(run, 5)
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == tag(5), f"killed too late: {latest} (the kill must come before the step-10 checkpoint)"
    assert not (run / "model_fp32.pt").exists()

    # B: resumes at the boundary; SIGUSR1 to rank 1 only once it trains in epoch 1
    proc = start(args, out / "log_b.txt", launcher=False)

    def training_after_resume():
        rows = rows_of(run)
        resumed = [i for i, r in enumerate(rows) if r.get("event") == "resume"]
        return bool(resumed) and any(r["split"] == "train" for r in rows[resumed[-1]:])

    wait_until(training_after_resume, proc)
    ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if "--local_rank=1" in " ".join(p.cmdline())]
    assert len(ranks) == 1, ranks
    ranks[0].send_signal(signal.SIGUSR1)
    info["b_exit"] = finish(proc, 150)
    info["b_log"] = tail(proc)
    info["rows_at_stop"] = rows_of(run)
    stop_tag = (run / "checkpoints" / "latest").read_text().strip()
    info["stop_tag"], info["stop_meta"] = stop_tag, complete_meta(run, int(stop_tag[len("step"):]))
    info["stop_files"] = sorted(p.name for p in (run / "checkpoints" / stop_tag).iterdir())

    # C: resumes mid-epoch 1 and finishes at step 10 (max_steps), the last step of epoch 1
    proc = start(args, out / "log_c.txt", launcher=False)
    assert finish(proc, 300) == 0, tail(proc)
    info["c_rows"], info["c_finished"] = rows_of(run), json.loads((run / "FINISHED").read_text())

    # D: extended (no max_steps): resumes at the step-10 epoch boundary and runs to the end
    proc = start(common(synth_dirs, run, *EPOCH_ARGS), out / "log_d.txt", launcher=False)
    assert finish(proc, 300) == 0, tail(proc)
    return info


# ---------------------------------------------------------------- 1. across epochs (the reference run)


def test_steplr_decays_at_the_right_epoch(reference):
    train = [r for r in rows_of(reference) if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert [r["epoch"] for r in train] == [e for e in range(EPOCHS) for _ in range(STEPS_PER_EPOCH)]
    for r in train:
        assert r["lr"] == pytest.approx(LR * GAMMA ** (r["epoch"] // STEP_SIZE), rel=1e-12, abs=0), r
    assert len({r["lr"] for r in train}) == 2  # the decay happened inside the run


def test_one_evaluation_per_epoch_at_its_last_step(reference):
    rows = rows_of(reference)
    last = [max(r["step"] for r in rows if r["split"] == "train" and r["epoch"] == e) for e in range(EPOCHS)]
    assert last == [5, 10, 15]
    for split in ("val_knee", "val_brain"):
        overall = [r for r in rows if r["split"] == split and "acquisition" not in r and "acceleration" not in r]
        assert [r["step"] for r in overall] == last, split  # none skipped, none repeated by the final evaluation
        assert [r["epoch"] for r in overall] == list(range(EPOCHS)), split  # the epoch of the weights scored
        per_step = Counter(r["step"] for r in rows if r["split"] == split)
        assert sorted(per_step) == last and len(set(per_step.values())) == 1, per_step  # whole sets only


# ---------------------------------------------------------------- 2. resume on 2 ranks


def test_resume_at_boundary_and_mid_epoch_is_bit_identical(reference, chain):
    run = chain["run"]
    boundary = chain["boundary_meta"]
    assert (boundary["step"], boundary["epoch"], boundary["world_size"]) == (5, 0, 2)
    assert boundary["samples_in_epoch"] == 10  # all of epoch 0 (9 samples + 1 padding): exactly at the boundary
    stop = chain["stop_meta"]
    assert stop["epoch"] == 1 and 5 < stop["step"] < 10 and stop["samples_in_epoch"] == 2 * (stop["step"] - 5)
    resumes = [r for r in rows_of(run) if r.get("event") == "resume"]
    assert [(r["step"], r["epoch"], r["tag"]) for r in resumes] == [
        (5, 0, tag(5)), (stop["step"], 1, tag(stop["step"])), (10, 1, tag(10))]

    ref = [r for r in rows_of(reference) if r["split"] == "train"]
    got = [r for r in rows_of(run) if r["split"] == "train"]
    assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(1, 16))  # every step exactly once
    assert [r["loss"] for r in got] == [r["loss"] for r in ref]
    assert [r["lr"] for r in got] == [r["lr"] for r in ref]
    for name in ("model_fp32.pt", "model_selected.pt"):
        wa, wb = weights(reference, name), weights(run, name)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)


# ---------------------------------------------------------------- 3. rollback of rows after the last checkpoint


def test_rows_after_the_checkpoint_are_rolled_back(reference, chain):
    killed = chain["rows_at_kill"]
    at_checkpoint = next(i for i, r in enumerate(killed) if r["split"] == "train" and r["step"] == 5) + 1
    past = killed[at_checkpoint:]
    assert any(r["split"] == "train" for r in past) and any(r["split"] == "val_knee" for r in past)  # to roll back
    rows = rows_of(chain["run"])
    first_resume = next(r for r in rows if r.get("event") == "resume")
    assert first_resume["rows_rolled_back"] == len(past)
    # each row once, equal to the uninterrupted run's rows (evaluations, best-model events) up to timings
    assert comparable(rows) == comparable(rows_of(reference))


def comparable(rows):
    """Rows up to timings, without the events that only the chain has (resume, the extension's config change)."""
    return untimed(r for r in rows if r.get("event") not in ("resume", "config_changed"))


def test_extension_never_scores_the_same_weights_twice(reference, chain):
    """C finished at step 10 (FINISHED written last, for max_steps 10); D resumed at that epoch boundary: the end-of-
    epoch evaluation of the step-10 weights is C's final one, kept once with the same label as in the reference."""
    assert (chain["c_finished"]["step"], chain["c_finished"]["max_steps"]) == (10, 10)
    finished = json.loads((chain["run"] / "FINISHED").read_text())
    assert (finished["step"], finished["epoch"], finished["max_steps"]) == (15, 2, None)
    evals = Counter((r["step"], r["split"]) for r in rows_of(chain["run"])
                    if r["split"].startswith("val_") and "acquisition" not in r and "acceleration" not in r)
    assert evals == Counter({(s, split): 1 for s in (5, 10, 15) for split in ("val_knee", "val_brain")}), evals
    c_evals = [(r["step"], r["epoch"]) for r in chain["c_rows"] if r["split"] == "val_knee"
               and "acquisition" not in r and "acceleration" not in r]
    ref_evals = [(r["step"], r["epoch"]) for r in rows_of(reference) if r["split"] == "val_knee"
                 and "acquisition" not in r and "acceleration" not in r]
    assert c_evals == ref_evals[:2] == [(5, 0), (10, 1)]  # labelled alike whether the run stopped there or not
    ends = [r["step"] for r in rows_of(chain["run"]) if r.get("event") == "end"]
    assert ends == [15]  # C's end (after its step-10 checkpoint) was rolled back when D continued the run


# ---------------------------------------------------------------- 5. rank agreement


def test_stop_signal_on_one_rank_stops_both_at_the_same_step(chain):
    assert chain["b_exit"] == 75, chain["b_log"]  # EXIT_REQUEUE
    stop = chain["stop_meta"]
    assert chain["stop_tag"] == tag(stop["step"]) and stop["world_size"] == 2
    files = chain["stop_files"]
    for rank in (0, 1):  # both ranks wrote their shard and RNG state of the same tag
        assert f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in files and f"rng_rank{rank}.pt" in files, files
    preempted = [r for r in chain["rows_at_stop"] if r.get("event") == "preempted"]
    assert [(r["step"], r["signal"], r["tag"]) for r in preempted] == [
        (stop["step"], int(signal.SIGUSR1), chain["stop_tag"])]


def test_nonfinite_loss_on_one_rank_is_skipped_by_both(synth_dirs, tmp_path):
    """NaN k-space in the one slice rank 1 trains first: both ranks skip that micro-step, rank 0 logs it."""
    train = tmp_path / "train"
    shutil.copytree(synth_dirs["train"], train)
    names = sorted(f.name for f in train.glob("*.h5"))
    slices = 3  # conftest.SYNTH_SLICES; dataset index = file index * slices + slice
    # the first micro-step (the run's epoch-0 order): rank 0 trains first[0], rank 1 first[1]
    first = list(EpochOrder(len(names) * slices, SEED, epoch=0))[:2]
    bad_name, bad_slice = names[first[1] // slices], first[1] % slices
    with h5py.File(train / bad_name, "r+") as hf:
        hf["kspace"][bad_slice] = np.full(hf["kspace"].shape[1:], np.nan, dtype=hf["kspace"].dtype)
    dirs = {**synth_dirs, "train": train}
    args = common(dirs, tmp_path / "run", "train.max_steps=2", "data.check_on_start=false", *NO_EVAL)
    proc = start(args, tmp_path / "log.txt", launcher=False)
    assert finish(proc, 150) == 0, tail(proc)
    rows = rows_of(tmp_path / "run")
    skipped = [r for r in rows if r.get("event") == "nonfinite_loss_skipped"]
    # logged by rank 0 about its own (finite) sample: it learned of rank 1's NaN through the agreement
    assert [(r["step"], [Path(f).name for f in r["fname"]], r["slice"]) for r in skipped] == [
        (0, [names[first[0] // slices]], [first[0] % slices])]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in train_rows)
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "run").values())
