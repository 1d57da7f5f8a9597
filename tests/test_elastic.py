"""Elastic resume (issue #17): the same command continues a run on another rank count.

One chain of real DeepSpeed ZeRO-2 runs on CPU feeds most assertions: 2 ranks (steps 1-2) -> 1 rank (3-6) ->
2 ranks (7-10), global batch 2 throughout (data.batch_size 1; grad_accum 1 on 2 ranks, 2 on 1 rank). The runs go
through ``RECORDER``, which is ``varnet_ds/train.py`` plus two records for the test: the Adam state right after the
checkpoint was loaded, and the (file, slice) of every trained sample.

Epoch 0 (9 samples) is interrupted after 4 samples (2 steps x 2 ranks), epoch 1 after 3 (run 2's step 5 spans
epochs 0 and 1); both remainders divide the new world size, so no DistributedSampler padding is involved.
"""

import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from trainrun import NO_EVAL, ROOT, common, env, free_port, ok, run_single, train_rows

from varnet_ds.trainer import checkpoint as ckpt
from varnet_ds.trainer import elastic

pytestmark = pytest.mark.slow

RECORDER = r'''
import json, os, sys
import torch
from varnet_ds.train import parse_args

args = parse_args()
if args.local_rank is not None:
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
from varnet_ds.config import load_config
from varnet_ds.distributed import init_distributed
from varnet_ds.trainer.build import build_trainer

torch.set_num_threads(1)
cfg = load_config(args.config, args.overrides)
dist = init_distributed()
trainer = build_trainer(cfg, args.ds_config, dist)
out = os.path.join(cfg.run.out_dir, "record")
os.makedirs(out, exist_ok=True)
start = trainer.state.global_step
opt = trainer.optimizer
part = opt.single_partition_of_fp32_groups[0]
state = opt.optimizer.state.get(part, {})
mine = {"fp32": part.detach().clone(), **{k: (v.detach().clone() if torch.is_tensor(v) else v)
                                          for k, v in state.items()}}
parts = [None] * dist.world_size
torch.distributed.all_gather_object(parts, mine)
if dist.is_main:
    torch.save({"world_size": dist.world_size, "grad_accum": trainer.engine.gradient_accumulation_steps(),
                "parts": parts}, os.path.join(out, f"after_load_step{start}.pt"))
log = open(os.path.join(out, f"samples_from{start}_rank{dist.rank}.jsonl"), "a")
train_step = trainer._train_step

def recording(batch):
    log.write(json.dumps({"epoch": trainer.state.epoch, "samples": [[os.path.basename(f), int(s)] for f, s in
                                                              zip(batch.fname, batch.slice_num)]}) + "\n")
    log.flush()
    return train_step(batch)

trainer._train_step = recording
sys.exit(trainer.fit())
'''

CHAIN = [(2, 2), (1, 6), (2, 10)]  # (ranks, train.max_steps)
SAMPLES_PER_EPOCH = 9  # conftest: 3 knee volumes x 3 slices


def launch(script, ranks, args, timeout=400, port=None):
    import subprocess

    if ranks == 1:
        cmd = [sys.executable, str(script), *args]
    else:
        launcher = Path(sys.executable).parent / "deepspeed"
        cmd = [str(launcher), "--num_gpus", str(ranks), "--master_port", str(port or free_port()), str(script), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def saved_optimizer(root, tag):
    """Adam's state and the fp32 master weights of a native checkpoint, ranks' partitions concatenated."""
    files = sorted(Path(root, tag).glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"),
                   key=lambda p: int(p.name.split("_")[3]))
    sds = [torch.load(f, weights_only=False)["optimizer_state_dict"] for f in files]
    states = [sd["base_optimizer_state"]["state"][0] for sd in sds]
    out = {"fp32": torch.cat([sd["single_partition_of_fp32_groups"][0] for sd in sds]),
           "step": {float(s["step"]) for s in states}}
    for key in ("exp_avg", "exp_avg_sq"):
        out[key] = torch.cat([s[key] for s in states])
    return out


def loaded_optimizer(record):
    parts = record["parts"]
    out = {"fp32": torch.cat([p["fp32"] for p in parts]), "step": {float(p["step"]) for p in parts}}
    for key in ("exp_avg", "exp_avg_sq"):
        out[key] = torch.cat([p[key] for p in parts])
    return out


def tree_digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def chain(synth_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("elastic")
    run_dir, root = out / "run", out / "run" / "checkpoints"
    script = out / "record_train.py"
    script.write_text(RECORDER)
    runs = []
    for i, (ranks, max_steps) in enumerate(CHAIN):
        info = {"ranks": ranks, "port": free_port()}
        if i:
            tag = ckpt.find_latest(root)
            info.update(tag=tag, saved=saved_optimizer(root, tag), meta=ckpt.read_meta(root, tag))
        if i == 2:
            # a conversion killed half-way: partial output in the temp folder, nothing renamed ...
            partial = root / f"{tag}.universal.tmp" / f"{tag}.universal" / "zero" / "module.weight"
            partial.mkdir(parents=True)
            (partial / "fp32.pt").write_bytes(b"truncated")
            # ... and a conversion of an earlier save of this step (a finished run re-saves its last step)
            stale = root / f"{tag}.universal"
            (stale / "zero").mkdir(parents=True)
            ckpt.write_meta(stale, {"source": tag, "source_complete": {**info["meta"], "time": "earlier"}})
            info["source_digest"] = tree_digest(root / tag)
        # no validation sets: evaluation plays no part here and costs CPU time
        info["proc"] = launch(script, ranks, common(synth_dirs, run_dir, f"train.max_steps={max_steps}",
                                                    *NO_EVAL), port=info["port"])
        ok(info["proc"])
        runs.append(info)
    return run_dir, runs


def test_every_step_logged_once_across_world_size_changes(chain):
    run_dir, runs = chain
    assert [r["step"] for r in train_rows(run_dir)] == list(range(1, 11))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = [r for r in rows if r.get("event") == "elastic_resume"]
    assert [(e["from_world_size"], e["to_world_size"], e["tag"], e["step"]) for e in events] == [
        (2, 1, ckpt.tag_for(2), 2), (1, 2, ckpt.tag_for(6), 6)]
    assert [e["grad_accum"] for e in events] == [2, 1] and {e["global_batch"] for e in events} == {2}
    assert [r["event"] for r in rows if r.get("event") in ("resume", "start")] == ["start", "resume", "resume"]
    for run in runs[1:]:
        assert "elastic resume:" in run["proc"].stdout and f"{run['tag']}.universal" in run["proc"].stdout
    lrs = [r["lr"] for r in train_rows(run_dir)]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == 0.001  # StepLR continued (demo: per epoch x 0.3 / 4)


def test_adam_state_after_each_switch_equals_the_saved_one(chain):
    run_dir, runs = chain
    params = runs[1]["saved"]["fp32"].numel()  # 1 rank: no partition padding
    for run in runs[1:]:
        step = run["meta"]["step"]
        record = torch.load(run_dir / "record" / f"after_load_step{step}.pt", weights_only=False)
        assert record["world_size"] == run["ranks"] and record["grad_accum"] == 2 // run["ranks"]
        saved, loaded = run["saved"], loaded_optimizer(record)
        assert saved["step"] == loaded["step"] == {float(step)}, (saved["step"], loaded["step"])
        for key in ("fp32", "exp_avg", "exp_avg_sq"):
            assert torch.equal(saved[key][:params], loaded[key][:params]), key
            assert not saved[key][params:].any() and not loaded[key][params:].any()  # only partition padding
        assert loaded["exp_avg_sq"].norm() > 0


def test_switch_continues_like_the_native_run_with_the_same_global_batch(chain, one_rank):
    """Steps 1-2 on 2 ZeRO-2 ranks, then 3-4 on 1 rank from the universal checkpoint == the session's 1-process run
    (grad_accum 2, same global batch 2) step for step, losses equal to the bit: 2 ranks train like 1 rank with
    grad_accum 2, and Adam's state, the schedule and the data order carried over."""
    run_dir, _ = chain
    ref = {r["step"]: r["loss"] for r in train_rows(one_rank)}
    got = {r["step"]: r["loss"] for r in train_rows(run_dir)}
    assert [got[s] for s in (1, 2, 3, 4)] == [ref[s] for s in (1, 2, 3, 4)]


def test_two_rank_runs_leave_no_shared_memory_behind(chain):
    """DeepSpeed's CPU all-reduce maps ~69 MB of /dev/shm per rank; every rank unlinks its own after start-up."""
    _, runs = chain
    for info in runs:
        leftover = [p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{info['port']}_*")]
        assert not leftover, (info["ranks"], leftover)


def test_no_sample_skipped_or_repeated_in_interrupted_epochs(chain):
    run_dir, _ = chain
    by_epoch = {}
    for f in (run_dir / "record").glob("samples_from*_rank*.jsonl"):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            by_epoch.setdefault(row["epoch"], []).extend(tuple(s) for s in row["samples"])
    for epoch in (0, 1):  # interrupted 2 -> 1 ranks after 4 samples, and 1 -> 2 ranks after 3 samples
        seen = Counter(by_epoch[epoch])
        assert len(seen) == SAMPLES_PER_EPOCH and set(seen.values()) == {1}, (epoch, seen)
    assert len(by_epoch[2]) == 2  # step 10 on 2 ranks


def test_interrupted_conversion_is_redone_and_checkpoints_are_marked(chain):
    run_dir, runs = chain
    root = run_dir / "checkpoints"
    last = runs[2]
    assert tree_digest(root / last["tag"]) == last["source_digest"]  # the original was only read
    assert not list(root.glob("*.tmp"))
    assert (root / f"{last['tag']}.universal" / "zero").is_dir()  # redone, not the stale conversion
    uni = json.loads((root / f"{last['tag']}.universal" / ckpt.COMPLETE).read_text())
    assert uni["source"] == last["tag"] and uni["source_complete"] == last["meta"]
    assert ckpt.find_latest(root) == ckpt.tag_for(10)
    for tag in ckpt.complete_tags(root):
        meta = ckpt.read_meta(root, tag)
        assert meta["universal_info"] and meta["global_batch"] == 2
        states = torch.load(root / tag / "mp_rank_00_model_states.pt", weights_only=False)
        assert states["universal_checkpoint_info"] == {"universal_checkpoint_version": 0.4}
        assert states["global_batch"] == 2 and "samples_in_epoch" in states


class FakeEngine:
    def save_checkpoint(self, root, tag, client_state, save_latest):
        (Path(root) / tag).mkdir(parents=True, exist_ok=True)
        torch.save(client_state, Path(root) / tag / "mp_rank_00_model_states.pt")


def test_conversions_follow_their_checkpoint(tmp_path):
    from varnet_ds.distributed import DistInfo

    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    ckpt.save(FakeEngine(), tmp_path, 7, {"global_batch": 4, "samples_in_epoch": 3}, dist, keep=2)
    meta = ckpt.read_meta(tmp_path, ckpt.tag_for(7))
    assert meta["global_batch"] == 4 and meta["samples_in_epoch"] == 3 and meta["universal_info"]
    for name in (".universal", ".universal.tmp"):
        (tmp_path / f"{ckpt.tag_for(7)}{name}").mkdir()
    ckpt.write_meta(tmp_path / f"{ckpt.tag_for(7)}.universal", {"source": ckpt.tag_for(7)})
    assert ckpt.find_latest(tmp_path) == ckpt.tag_for(7) and ckpt.complete_tags(tmp_path) == [ckpt.tag_for(7)]
    ckpt.save(FakeEngine(), tmp_path, 7, {}, dist, keep=2)  # re-save of the same step: its conversion is stale
    assert not (tmp_path / f"{ckpt.tag_for(7)}.universal").exists()
    for step in (8, 9):
        ckpt.save(FakeEngine(), tmp_path, step, {}, dist, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [ckpt.tag_for(8), ckpt.tag_for(9)]


def test_failed_conversion_leaves_the_original(tmp_path, monkeypatch):
    import subprocess

    root, tag = tmp_path / "checkpoints", ckpt.tag_for(4)
    (root / tag).mkdir(parents=True)
    (root / tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"shard")
    meta = {"step": 4, "world_size": 2, "universal_info": True}
    ckpt.write_meta(root / tag, meta)
    (root / ckpt.LATEST).write_text(tag)
    before = tree_digest(root / tag)

    def killed(cmd, **kwargs):
        out = Path(cmd[cmd.index("--output_folder") + 1])
        (out / "zero").mkdir(parents=True)
        (out / "zero" / "half.pt").write_bytes(b"half")
        return subprocess.CompletedProcess(cmd, -9, "", "Killed")

    monkeypatch.setattr(elastic.subprocess, "run", killed)
    with pytest.raises(ckpt.CheckpointError, match="untouched: resume with 2 ranks"):
        elastic.ensure_universal(root, tag, meta)
    assert not (root / f"{tag}.universal").exists() and not list(root.glob("*.tmp"))
    assert ckpt.find_latest(root) == tag and tree_digest(root / tag) == before
    assert ckpt.complete_tags(root) == [tag]  # leftovers are never taken for a tag
    # the rerun redoes it, also over a conversion of an earlier save of this step
    (root / f"{tag}.universal").mkdir()
    ckpt.write_meta(root / f"{tag}.universal", {"source": tag, "source_complete": {**meta, "step": 3}})

    def converts(cmd, **kwargs):
        out = Path(cmd[cmd.index("--output_folder") + 1])
        assert not out.exists()  # the leftovers were removed first
        (out / "zero").mkdir(parents=True)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(elastic.subprocess, "run", converts)
    assert elastic.ensure_universal(root, tag, meta) is not None
    assert (root / f"{tag}.universal" / "zero").is_dir() and not list(root.glob("*.tmp"))
    assert json.loads((root / f"{tag}.universal" / ckpt.COMPLETE).read_text())["source_complete"] == meta
    assert elastic.ensure_universal(root, tag, meta) is None  # done once
    assert ckpt.find_latest(root) == tag and tree_digest(root / tag) == before


def test_global_batch_that_cannot_be_kept_is_refused(chain, synth_dirs):
    """Global batch 2 (the chain's): 3 ranks cannot keep it, nor 1 rank with data.batch_size 3."""
    from varnet_ds.config import load_config
    from varnet_ds.distributed import DistInfo

    run_dir, _ = chain
    root = run_dir / "checkpoints"
    before = tree_digest(root)
    args = common(synth_dirs, run_dir, "train.max_steps=12", *NO_EVAL)
    cfg = load_config("demo", args[4:])
    ds_cfg = {}
    three = DistInfo(rank=0, world_size=3, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(ckpt.CheckpointError) as err:
        elastic.plan_resume(cfg, root, three, ds_cfg)
    msg = str(err.value)
    assert "global batch of 2" in msg and "3 ranks" in msg and "Resume on 1 or 2 ranks" in msg, msg
    assert ds_cfg == {}
    # a real process: exit code 2 before any engine is built, the numbers named, nothing converted or written
    proc = run_single([*args, "data.batch_size=3", "run.resume=force"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "CheckpointError" in proc.stderr and "global batch of 2" in proc.stderr, proc.stderr[-3000:]
    assert "1 rank x data.batch_size 3 = 3" in proc.stderr and "data.batch_size dividing 2" in proc.stderr
    assert tree_digest(root) == before


def test_skip_sampler_splits_the_global_order():
    """Same world size: exactly DistributedSampler minus the batches done; any other: the order's rest, split."""
    from torch.utils.data import DistributedSampler

    from varnet_ds.data.loader import SkipSampler

    for n in (1, 5, 9, 10):
        data = list(range(n))
        order = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=7)
        order.set_epoch(3)
        perm = list(order)
        for ranks in (1, 2, 3, 4):
            for per_rank in range(n + 2):
                for rank in range(ranks):
                    native = DistributedSampler(data, num_replicas=ranks, rank=rank, shuffle=True, seed=7)
                    native.set_epoch(3)
                    mine = SkipSampler(order, per_rank * ranks, ranks, rank)
                    assert list(mine) == list(native)[per_rank:] and len(mine) == len(list(mine))
            for done in range(n + 2):
                shares = [list(SkipSampler(order, done, ranks, r)) for r in range(ranks)]
                assert len({len(s) for s in shares}) == 1  # every rank takes as many steps
                merged = [s[j] for j in range(len(shares[0])) for s in shares]
                rest = perm[done:]
                assert merged[:len(rest)] == rest and len(merged) - len(rest) < ranks  # + DistributedSampler padding
