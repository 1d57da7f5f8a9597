"""Start-up cost of a training process with W&B off: the recorded versions and provenance and a disabled tracker
import no wandb."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import sys, tempfile
from varnet_ds.config import load_config
from varnet_ds.provenance import run_provenance
from varnet_ds.system import versions
from varnet_ds.tracking.tracker import Tracker
v = versions()
run_provenance({"train_path": "."}, 1, "cpu")
tracker = Tracker(load_config("demo", ["log.wandb.mode=disabled"]), tempfile.mkdtemp(), rank=0)
tracker.log({"step": 1, "epoch": 0, "split": "train", "loss": 0.5})
tracker.finish()
print("wandb imported" if "wandb" in sys.modules else "no wandb", v["wandb"], v["deepspeed"], v["numpy"])
"""


def test_versions_and_disabled_tracking_do_not_import_wandb():
    import deepspeed
    import numpy
    import wandb

    proc = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["no", "wandb", wandb.__version__, deepspeed.__version__, numpy.__version__]
