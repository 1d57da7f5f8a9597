"""varnet_ds.console: total steps, plain progress lines off a terminal, the tqdm bar on one, evaluation lines."""

import io
import math
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DistributedSampler

from varnet_ds.console import EvalConsole, TrainProgress, batches_per_epoch, format_duration, total_steps
from varnet_ds.eval.validate import EvalSplit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_total_steps_epochs_and_max_steps_cap():
    assert total_steps(10, 1, 2, 1, epochs=6) == 30
    assert total_steps(10, 1, 2, 1, epochs=6, max_steps=12) == 12
    assert total_steps(10, 1, 2, 1, epochs=6, max_steps=100) == 30
    assert total_steps(10, 1, 2, 1, epochs=6, max_steps=0) == 30  # train.max_steps=0: no cap


def test_total_steps_accumulation_spans_epochs():
    # 5 micro-batches per epoch, 2 per optimizer step: the window crosses epochs -> floor(3 * 5 / 2) = 7, not 3 * 2
    assert batches_per_epoch(10, 1, 2) == 5
    assert total_steps(10, 1, 2, grad_accum=2, epochs=3) == 7


def test_total_steps_two_ranks_odd_dataset_matches_the_loader():
    # 7 samples on 2 ranks: DistributedSampler(drop_last=False) pads to 4 per rank -> 2 batches of 2
    dataset = list(range(7))
    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=0, drop_last=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, sampler=sampler)
    assert batches_per_epoch(7, 2, 3) == len(loader) == 2
    assert total_steps(7, 2, 3, grad_accum=1, epochs=3) == 6
    assert total_steps(7, 2, 2, grad_accum=3, epochs=2) == 1  # 2 batches x 2 epochs / 3


def test_for_run_reads_the_config():
    cfg = SimpleNamespace(data=SimpleNamespace(batch_size=1), run=SimpleNamespace(name="r"), log=SimpleNamespace(
        progress=True), train=SimpleNamespace(grad_accum=2, epochs=5, max_steps=None))
    progress = TrainProgress.for_run(cfg, SimpleNamespace(world_size=2, is_main=True), 9, initial=3,
                                     stream=io.StringIO())
    assert (progress.total, progress.initial, progress.epochs, progress.enabled) == (12, 3, 5, True)  # 5*5 // 2
    off = SimpleNamespace(**{**vars(cfg), "log": SimpleNamespace(progress=False)})
    assert not TrainProgress.for_run(off, SimpleNamespace(world_size=2, is_main=True), 9, 0).enabled
    assert not TrainProgress.for_run(cfg, SimpleNamespace(world_size=2, is_main=False), 9, 0).enabled


def test_format_duration():
    assert [format_duration(s) for s in (0, 45, 96, 3600 + 5 * 60)] == ["0s", "45s", "1m36s", "1h05m"]


def test_plain_lines_off_a_terminal():
    out, clock = io.StringIO(), Clock()
    progress = TrainProgress(360, epochs=6, stream=out, interval=30, clock=clock)
    assert progress.bar is None
    clock.now += 2.0
    progress.update(1, 0, 0.5)  # first step: printed
    lines = out.getvalue().splitlines()
    assert lines == ["[varnet_ds] step 1/360 (0%) epoch 1/6 loss 0.5000 0.5 steps/s ETA 11m58s"]
    for step in range(2, 120):
        clock.now += 0.5  # 59 s after the first line by step 119
        progress.update(step, 1, 0.4)
        if step < 61:
            assert len(out.getvalue().splitlines()) == 1, step  # nothing in between
    lines = out.getvalue().splitlines()
    assert lines[1] == "[varnet_ds] step 61/360 (16%) epoch 2/6 loss 0.4000 1.91 steps/s ETA 2m37s"  # 30 s later
    assert len(lines) == 2
    clock.now += 0.5
    progress.update(360, 5, 0.3123)  # the last step is always printed
    assert out.getvalue().splitlines()[-1].startswith("[varnet_ds] step 360/360 (100%) epoch 6/6 loss 0.3123")
    assert "ETA 0s" in out.getvalue().splitlines()[-1]
    progress.close()
    assert len(out.getvalue().splitlines()) == 3
    assert "\r" not in out.getvalue()


def test_plain_close_prints_the_owed_last_step_and_rate_counts_from_the_resume_step():
    out, clock = io.StringIO(), Clock()
    progress = TrainProgress(100, initial=40, epochs=2, stream=out, interval=30, clock=clock)
    clock.now += 10
    progress.update(50, 1, 0.2)  # 10 steps in 10 s since the resume
    progress.update(51, 1, 0.1)
    assert "1 steps/s ETA 50s" in out.getvalue()
    assert len(out.getvalue().splitlines()) == 1
    progress.close()  # preempted: the last step's line is owed
    assert out.getvalue().splitlines()[-1].startswith("[varnet_ds] step 51/100 (51%) epoch 2/2 loss 0.1000")


def test_disabled_prints_nothing():
    for stream in (io.StringIO(), TTY()):
        progress = TrainProgress(10, stream=stream, enabled=False)
        progress.update(1, 0, 1.0)
        progress.update(10, 0, 1.0)
        progress.close()
        assert progress.bar is None and stream.getvalue() == ""


def test_terminal_gets_a_tqdm_bar_with_total_epoch_and_loss():
    out = TTY()
    progress = TrainProgress(360, initial=100, epochs=6, desc="run", stream=out)
    assert progress.bar is not None and progress.bar.total == 360 and progress.bar.n == 100
    progress.update(120, 1, 0.3123)
    assert progress.bar.n == 120
    progress.bar.refresh()
    text = out.getvalue()
    assert "120/360" in text and "epoch=2/6" in text and "loss=0.3123" in text and "\r" in text
    assert "[varnet_ds] step" not in text
    progress.close()
    assert progress.bar is None


def _split(tmp_path, name, files, **kwargs):
    folder = tmp_path / name
    folder.mkdir()
    for f in files:
        (folder / f).write_bytes(b"")
    (folder / "notes.txt").write_text("not a volume")
    return EvalSplit(name, str(folder), "random", [(0.08, 4), (0.04, 8)], **kwargs)


def test_eval_start_line_counts_volumes(tmp_path):
    out = io.StringIO()
    console = EvalConsole(stream=out)
    files = [f"file{i}.h5" for i in range(12)]
    splits = [_split(tmp_path, "val_knee", files, max_volumes=10),
              _split(tmp_path, "val_brain", files[:3], skip_files=[str(tmp_path / "x" / "file1.h5")])]
    seen = []
    for split in console.started(splits):
        seen.append((split.name, len(out.getvalue().splitlines())))  # announced before it is handed out
    assert seen == [("val_knee", 1), ("val_brain", 2)]
    assert out.getvalue().splitlines() == ["[varnet_ds] evaluating val_knee: 10 volumes x 2 accelerations",
                                           "[varnet_ds] evaluating val_brain: 2 volumes x 2 accelerations"]


def _row(ssim, psnr=25.31, nmse=0.0213):
    return {"group": "overall", "ssim": ssim, "psnr": psnr, "nmse": nmse}


def test_eval_result_lines_and_best_so_far_per_split():
    out = io.StringIO()
    console = EvalConsole(stream=out)
    console.result(240, 4, "val_knee", [_row(0.6123), _row(0.1)])
    console.result(240, 4, "val_brain", [_row(0.5)])
    console.result(300, 5, "val_knee", [_row(0.6001, 25.0, 0.03)])
    console.result(360, 6, "val_knee", [_row(0.7)])
    console.result(360, 6, "val_brain", [])  # no rows: no line
    assert out.getvalue().splitlines() == [
        "[varnet_ds] epoch 4 step 240 val_knee SSIM 0.6123 PSNR 25.31 NMSE 0.0213 (best SSIM 0.6123 @ epoch 4)",
        "[varnet_ds] epoch 4 step 240 val_brain SSIM 0.5000 PSNR 25.31 NMSE 0.0213 (best SSIM 0.5000 @ epoch 4)",
        "[varnet_ds] epoch 5 step 300 val_knee SSIM 0.6001 PSNR 25.00 NMSE 0.0300 (best SSIM 0.6123 @ epoch 4)",
        "[varnet_ds] epoch 6 step 360 val_knee SSIM 0.7000 PSNR 25.31 NMSE 0.0213 (best SSIM 0.7000 @ epoch 6)",
    ]
    assert console.best == {"val_knee": (0.7, 6), "val_brain": (0.5, 4)}


def test_eval_console_nan_first_then_real_and_disabled(tmp_path):
    out = io.StringIO()
    console = EvalConsole(stream=out)
    console.result(1, 1, "val_knee", [_row(math.nan)])
    console.result(2, 2, "val_knee", [_row(0.2)])
    assert console.best["val_knee"] == (0.2, 2)
    quiet = EvalConsole(enabled=False, stream=out)
    before = out.getvalue()
    quiet.result(1, 1, "val_knee", [_row(0.9)])
    list(quiet.started([_split(tmp_path, "val_knee", ["a.h5"])]))
    assert out.getvalue() == before


@pytest.mark.parametrize("world_size,rank", [(2, 0), (2, 1)])
def test_batches_per_epoch_every_rank_alike(world_size, rank):
    dataset = list(range(11))
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, drop_last=False)
    assert len(torch.utils.data.DataLoader(dataset, batch_size=2, sampler=sampler)) == batches_per_epoch(11, 2, 2)
