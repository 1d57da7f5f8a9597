"""The study statistics on their own (varnet_ds/analysis/stats.py and study/contrasts.py): degenerate intervals,
Wilcoxon p-values, a real hierarchical bootstrap, pairing by seed, volumes present in both arms and the breakdown
groups."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pytest

from varnet_ds.analysis.stats import hierarchical_ci, wilcoxon_p
from varnet_ds.analysis.study.contrasts import contrast, delta_matrix
from varnet_ds.run_folder import VolumeRow

REPO = Path(__file__).resolve().parents[1]


def _metrics(ssim: float) -> Dict[str, float]:
    return {"ssim": ssim, "psnr": 20.0 + 10.0 * ssim, "nmse": 0.3 - 0.2 * ssim}


def _rows(n_seeds: int, n_vols: int, fn: Callable[[int, int, int], float], accs=(4, 8)) -> Dict[int, List[VolumeRow]]:
    """seed -> rows with ssim = fn(seed, volume, acc) (psnr/nmse follow)."""
    return {s: [VolumeRow(f"v{v}.h5", "AXT2" if v % 2 else "AXT1", a, 3, **_metrics(fn(s, v, a)))
                for v in range(n_vols) for a in accs] for s in range(1, n_seeds + 1)}



def test_constant_difference_gives_degenerate_interval():
    ref = _rows(3, 5, lambda s, v, a: 0.5 + 0.03 * s + 0.01 * v + 0.002 * a)
    arm = {s: [r._replace(**_metrics(r.ssim + 0.01)) for r in rows] for s, rows in ref.items()}
    res = contrast(ref, arm, "ssim")
    assert res["mean"] == pytest.approx(0.01, abs=1e-12)
    assert res["ci_low"] == pytest.approx(0.01, abs=1e-12) and res["ci_high"] == pytest.approx(0.01, abs=1e-12)
    assert res["p_value"] == pytest.approx(2 / 2 ** 5)  # exact Wilcoxon: all 5 differences positive
    assert (res["n_seeds"], res["n_volumes"], res["wins"], res["losses"]) == (3, 5, 5, 0)
    ref_means = [np.mean([0.5 + 0.03 * s + 0.01 * v + 0.002 * a for v in range(5) for a in (4, 8)]) for s in (1, 2, 3)]
    assert res["noise_floor_sd"] == pytest.approx(np.std(ref_means, ddof=1))
    # nmse: lower is better, so the arm with higher SSIM (lower NMSE) wins every volume
    nmse = contrast(ref, arm, "nmse")
    assert (nmse["wins"], nmse["losses"]) == (5, 0) and nmse["mean"] == pytest.approx(-0.002)


def test_wilcoxon_p_known_values():
    assert wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == pytest.approx(2 / 2 ** 6)
    assert wilcoxon_p([-0.1, -0.2, -0.3]) == pytest.approx(2 / 2 ** 3)
    # ranks 1..4, negative rank set {2}: W- = 2; P(W- <= 2) = |{}, {1}, {2}| / 16, two-sided p = 2 * 3 / 16
    assert wilcoxon_p([1.0, -2.0, 3.0, 4.0]) == pytest.approx(6 / 16)
    assert math.isnan(wilcoxon_p([0.3]))
    assert math.isnan(wilcoxon_p([0.0, 0.0, 0.0]))


def test_one_seed_or_one_volume_is_degenerate_without_warnings(recwarn):
    one_seed = np.array([[0.01, 0.03, -0.02, 0.05]])
    assert hierarchical_ci(one_seed) == (pytest.approx(0.0175), pytest.approx(0.0175))
    one_vol = np.array([[0.01], [0.02], [0.06]])
    assert hierarchical_ci(one_vol) == (pytest.approx(0.03), pytest.approx(0.03))
    ref = _rows(1, 1, lambda s, v, a: 0.5)
    res = contrast(ref, {1: [r._replace(ssim=0.52) for r in ref[1]]}, "ssim")
    assert res["mean"] == pytest.approx(0.02) and res["ci_low"] == res["ci_high"] == pytest.approx(0.02)
    assert math.isnan(res["p_value"]) and math.isnan(res["noise_floor_sd"])
    assert not recwarn.list, [str(w.message) for w in recwarn.list]


def test_interval_is_a_real_bootstrap():
    delta = np.random.default_rng(5).normal(0.01, 0.02, size=(4, 12))
    low, high = hierarchical_ci(delta)
    assert low < delta.mean() < high and high - low > 0.005
    assert hierarchical_ci(delta) == (low, high)  # fixed generator seed: reproducible
    assert hierarchical_ci(delta, seed=1) != (low, high)


def test_pairing_by_seed():
    """Seed effects cancel only when arm seed s is paired with reference seed s."""
    ref = _rows(3, 6, lambda s, v, a: 0.5 + 0.05 * s + 0.01 * v)
    arm = {s: [r._replace(ssim=r.ssim + 0.01) for r in rows] for s, rows in ref.items()}
    paired = contrast(ref, arm, "ssim")
    assert paired["ci_low"] == pytest.approx(0.01) and paired["ci_high"] == pytest.approx(0.01)
    swapped = contrast(ref, {1: arm[3], 2: arm[2], 3: arm[1]}, "ssim")  # seed 3's runs labelled seed 1 and back
    assert swapped["mean"] == pytest.approx(0.01)  # same mean, but the seed effects (±0.1) no longer cancel
    assert swapped["ci_low"] < -0.02 and swapped["ci_high"] > 0.04
    delta, seeds, fnames = delta_matrix(ref, {1: arm[3], 2: arm[2], 3: arm[1]}, "ssim")
    assert seeds == [1, 2, 3] and len(fnames) == 6
    assert delta[:, 0] == pytest.approx([0.11, 0.01, -0.09])


def test_volumes_present_in_both_and_breakdown_groups():
    ref = _rows(2, 4, lambda s, v, a: 0.5 + 0.01 * v + (0.02 if a == 4 else 0.0))
    arm = {s: [r._replace(ssim=r.ssim + (0.01 if r.acceleration == 4 else 0.03)) for r in rows if r.fname != "v3.h5"]
           for s, rows in ref.items()}
    delta, _, fnames = delta_matrix(ref, arm, "ssim")
    assert fnames == ["v0.h5", "v1.h5", "v2.h5"] and delta == pytest.approx(np.full((2, 3), 0.02))
    assert contrast(ref, arm, "ssim", acceleration=8)["mean"] == pytest.approx(0.03)
    acq = contrast(ref, arm, "ssim", acquisition="AXT2")  # v1 only (v3 is not in arm)
    assert acq["n_volumes"] == 1 and acq["mean"] == pytest.approx(0.02)


# ---------------------------------------------------------------------------------------------- study outputs
