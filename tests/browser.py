"""Headless Chromium for the report render tests: a screenshot of an HTML file as an RGB array."""

from __future__ import annotations

import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest


def chromium() -> str:
    """Path of Debian's chromium (``make install`` installs it; a run whose venv predates that installs it here, with
    the same script), failing loudly when it cannot be had."""
    exe = Path("/usr/bin/chromium")
    if not exe.is_file():
        script = Path(__file__).resolve().parents[1] / "scripts" / "install_apt.sh"
        proc = subprocess.run(["bash", str(script), "chromium", str(exe), "no Chromium"], capture_output=True,
                              text=True, timeout=1200)
        if not exe.is_file():
            pytest.fail(f"/usr/bin/chromium is missing and could not be installed: {proc.stdout.strip()} "
                        "(run `apt-get install -y chromium` as root)")
    return str(exe)


def screenshot(html: Path, tmp_path: Path, width: int = 1280, height: int = 2000) -> np.ndarray:
    """Render ``html`` in headless Chromium at ``width x height`` CSS pixels.

    Returns:
        ``[height, width, 3]`` float RGB in [0, 1] (``shot.png`` is left in ``tmp_path`` for a look).
    """
    shot = tmp_path / "shot.png"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", f"--window-size={width},{height}",
           html.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    assert shot.is_file(), f"no screenshot written:\n{proc.stderr[-3000:]}"
    return mpimg.imread(shot)[..., :3]
