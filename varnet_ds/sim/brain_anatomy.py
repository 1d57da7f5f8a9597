"""Real brain anatomy for the simulator: a T1 template with skull, re-contrasted to T1/T2/FLAIR/T1-post.

The Colin27 single-subject T1 template (``ch2.nii.gz``, Debian's mricron-data) is used when installed; otherwise
nilearn's bundled, skull-stripped MNI152 template, around which a synthetic skull and scalp are added.
Tissue classes are defined by T1 intensity (CSF < GM < WM; fat brightest) inside and outside the intracranial
mask and remapped to each contrast on the 1 mm template grid (so partial volumes mix signals, not labels);
axial slices are then sampled with trilinear interpolation at any pose. The template and every contrast
volume are computed once per process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import nibabel as nib
import numpy as np
from scipy import ndimage

COLIN_PATH = Path("/usr/share/mricron/templates/ch2.nii.gz")
COLIN_SOURCE = "Colin27 ch2.nii.gz (mricron-data)"
MNI_SOURCE = "MNI152 (nilearn)"
CONTRASTS = ("T1", "T2", "FLAIR", "T1POST")

# T1 intensity (white matter = 1) -> signal, inside and outside the intracranial mask
_INTRA_KNOTS = [0.0, 0.30, 0.45, 0.62, 0.78, 0.92, 1.05, 3.0]
_EXTRA_KNOTS = [0.0, 0.15, 0.40, 0.70, 1.20, 1.60, 3.0]
_MAPS = {
    "T1": ([0.06, 0.16, 0.30, 0.46, 0.58, 0.72, 0.82, 0.90], [0.0, 0.03, 0.20, 0.40, 0.70, 0.90, 1.0]),
    "T2": ([1.00, 0.97, 0.82, 0.62, 0.56, 0.46, 0.40, 0.40], [0.0, 0.04, 0.18, 0.28, 0.55, 0.72, 0.75]),
    "FLAIR": ([0.03, 0.05, 0.28, 0.56, 0.62, 0.52, 0.46, 0.46], [0.0, 0.03, 0.15, 0.25, 0.45, 0.60, 0.62]),
}


@dataclass(frozen=True)
class BrainTemplate:
    """A T1 head template on its voxel grid.

    Attributes:
        t1: ``[X, Y, Z]`` float32 T1 intensities, white matter about 1.
        intracranial: ``[X, Y, Z]`` float32 soft mask of brain + CSF inside the skull.
        affine: ``[4, 4]`` voxel -> world (RAS, mm).
        source: human-readable origin, stored in the h5 attrs.
    """

    t1: np.ndarray
    intracranial: np.ndarray
    affine: np.ndarray
    source: str

    @property
    def centre(self) -> np.ndarray:
        """World coordinates (mm) of the centre of the intracranial mask."""
        idx = np.argwhere(self.intracranial > 0.5)
        mid = (idx.min(0) + idx.max(0)) / 2.0
        return (self.affine @ np.append(mid, 1.0))[:3]

    @property
    def z_range(self) -> Tuple[float, float]:
        """World ``z`` (mm) of the lowest and highest intracranial voxel."""
        idx = np.argwhere(self.intracranial.max(axis=(0, 1)) > 0.5)[:, 0]
        zs = self.affine[2, 2] * idx + self.affine[2, 3]
        return float(zs.min()), float(zs.max())


def _wm_peak(values: np.ndarray) -> float:
    """Intensity of the white-matter histogram peak (mode of the upper half of brain intensities)."""
    hi = values[values > np.median(values)]
    hist, edges = np.histogram(hi, bins=64)
    i = int(np.argmax(hist))
    return float(0.5 * (edges[i] + edges[i + 1]))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        raise ValueError("brain template: no brain voxels found")
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _brain_mask_from_t1(t1: np.ndarray) -> np.ndarray:
    """Brain mask of a T1 head image from GM/WM intensities and morphology (when no BET mask is installed)."""
    m = (t1 > 0.55) & (t1 < 1.3)
    m = ndimage.binary_opening(m, iterations=3)
    m = _largest_component(m)
    m = ndimage.binary_closing(m, iterations=4)
    return ndimage.binary_fill_holes(m)


def _load_colin(path: Path) -> BrainTemplate:
    img = nib.load(str(path))
    raw = np.asanyarray(img.dataobj).astype(np.float32)
    bet = path.with_name("ch2bet.nii.gz")
    brain = np.asanyarray(nib.load(str(bet)).dataobj) > 0 if bet.is_file() else None
    if brain is not None and brain.shape != raw.shape:
        brain = None
    t1 = raw / _wm_peak(raw[brain] if brain is not None else raw[raw > 0.2 * raw.max()])
    if brain is None:
        brain = _brain_mask_from_t1(t1)
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(brain, iterations=2))
    intracranial = ndimage.binary_dilation(brain, iterations=3)  # + subarachnoid CSF
    soft = ndimage.gaussian_filter(intracranial.astype(np.float32), 0.7)
    return BrainTemplate(t1.astype(np.float32), soft.astype(np.float32), img.affine.astype(np.float64),
                         COLIN_SOURCE)


def _load_mni() -> BrainTemplate:
    """Skull-stripped MNI152 (bundled with nilearn, no download) + a synthetic skull and scalp."""
    from nilearn import datasets

    img = datasets.load_mni152_template(resolution=1)
    raw = np.asanyarray(img.dataobj).astype(np.float32)
    brain = ndimage.binary_fill_holes(raw > 0.05 * raw.max())
    t1 = raw / _wm_peak(raw[brain])
    intracranial = ndimage.binary_dilation(brain, iterations=2)
    # distance (mm) outside the intracranial space, on a 2 mm grid for speed
    coarse = ndimage.distance_transform_edt(~intracranial[::2, ::2, ::2]) * 2.0
    dist = ndimage.zoom(coarse, 2, order=1)[: t1.shape[0], : t1.shape[1], : t1.shape[2]]
    pad = [(0, s - d) for s, d in zip(t1.shape, dist.shape)]
    dist = np.pad(dist, pad, mode="edge").astype(np.float32)
    layers = np.interp(dist, [0, 0.5, 1.5, 2.5, 3.5, 5.0, 6.5, 7.5, 9.0, 9.5, 14, 14.5, 15.5, 16.5],
                       [0.25, 0.25, 0.05, 0.05, 0.6, 0.6, 0.05, 0.45, 0.45, 1.7, 1.7, 0.8, 0.8, 0.0])
    outside = ~intracranial
    t1[outside] = layers[outside]
    soft = ndimage.gaussian_filter(intracranial.astype(np.float32), 0.7)
    return BrainTemplate(t1.astype(np.float32), soft.astype(np.float32), img.affine.astype(np.float64), MNI_SOURCE)


def _resolve(colin_path: Optional[str]) -> str:
    """Cache key: the Colin27 file that will be used, or "" for the MNI152 fallback."""
    path = Path(colin_path) if colin_path is not None else COLIN_PATH
    return str(path.resolve()) if path.is_file() else ""


@functools.lru_cache(maxsize=2)
def _load_cached(key: str) -> BrainTemplate:
    return _load_colin(Path(key)) if key else _load_mni()


def load_template(colin_path: Optional[str] = None) -> BrainTemplate:
    """Load (once per process) Colin27 if ``colin_path`` (default :data:`COLIN_PATH`) exists, else MNI152."""
    return _load_cached(_resolve(colin_path))


def _noise3d(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return f / (f.std() + 1e-8)


def contrast_volume(contrast: str, colin_path: Optional[str] = None) -> np.ndarray:
    """Template remapped to ``contrast`` (one of :data:`CONTRASTS`), ``[X, Y, Z]`` float32, cached."""
    if contrast not in CONTRASTS:
        raise ValueError(f"brain contrast must be one of {CONTRASTS}, got {contrast!r}")
    return _contrast_cached(contrast, _resolve(colin_path))


@functools.lru_cache(maxsize=8)
def _contrast_cached(contrast: str, key: str) -> np.ndarray:
    tpl = _load_cached(key)
    base = "T1" if contrast == "T1POST" else contrast
    intra_vals, extra_vals = _MAPS[base]
    v, ic = tpl.t1, tpl.intracranial
    intra = np.interp(v, _INTRA_KNOTS, intra_vals).astype(np.float32)
    extra = np.interp(v, _EXTRA_KNOTS, extra_vals).astype(np.float32)
    out = extra + ic * (intra - extra)
    if contrast == "T1POST":
        # gadolinium: enhancing dura at the intracranial boundary and the falx, vessels in the sulcal CSF
        rng = np.random.default_rng(20240527)  # fixed: anatomy, not per volume
        small = tuple(s // 2 + 1 for s in v.shape)
        n1, n2 = _noise3d(rng, small, 2.0), _noise3d(rng, small, 2.0)
        vessels = np.exp(-(n1**2 + n2**2) / 0.02)
        vessels = ndimage.zoom(vessels, 2, order=1)[: v.shape[0], : v.shape[1], : v.shape[2]]
        vessels = np.pad(vessels, [(0, s - d) for s, d in zip(v.shape, vessels.shape)])
        csf = np.clip((0.55 - v) / 0.25, 0, 1) * ic
        dura = 4 * ic * (1 - ic)
        mid = int(round(np.linalg.solve(tpl.affine, np.append(tpl.centre, 1.0))[0]))
        falx = np.zeros_like(v)
        falx[mid - 1 : mid + 2] = 1.0
        falx *= csf
        out = out + 0.45 * dura + 0.5 * csf * vessels + 0.25 * falx
    out = out.astype(np.float32)
    out.setflags(write=False)  # shared by every caller of the cache
    return out


@dataclass(frozen=True)
class BrainPose:
    """Per-volume random pose of the head and slice stack."""

    angle: float  # in-plane rotation (rad)
    pitch: float  # small tilt about the left-right axis (rad)
    roll: float  # small tilt about the anterior-posterior axis (rad)
    scale: float
    shift: Tuple[float, float]  # in-plane shift (mm), image x (columns) and y (up)
    z_span: Tuple[float, float]  # world z of the first and last slice (mm)


def sample_brain_pose(rng: np.random.Generator, tpl: BrainTemplate) -> BrainPose:
    """Draw a plausible axial acquisition: small rotations, +-8 % scale, shifts, slice coverage."""
    z0, z1 = tpl.z_range
    return BrainPose(
        angle=float(np.deg2rad(rng.uniform(-8, 8))),
        pitch=float(np.deg2rad(rng.uniform(-6, 6))),
        roll=float(np.deg2rad(rng.uniform(-3, 3))),
        scale=float(rng.uniform(0.92, 1.08)),
        shift=(float(rng.uniform(-8, 8)), float(rng.uniform(-10, 10))),
        z_span=(float(z0 + rng.uniform(30, 55)), float(z1 - rng.uniform(8, 25))),
    )


def brain_slice(pose: BrainPose, x: np.ndarray, y: np.ndarray, z_world: float, contrast: str,
                colin_path: Optional[str] = None) -> np.ndarray:
    """Sample one axial slice of the re-contrasted template.

    Args:
        pose: volume pose.
        x: ``[1, W]`` column coordinates (mm); columns run from patient right to left (radiological).
        y: ``[H, 1]`` row coordinates (mm), up = anterior.
        z_world: slice height (world mm).
        contrast: one of :data:`CONTRASTS`.
        colin_path: template override (tests use it to force the MNI152 fallback).

    Returns:
        ``[H, W]`` float32 magnitude image (about 0..1).
    """
    tpl = load_template(colin_path)
    vol = contrast_volume(contrast, colin_path)
    centre = tpl.centre
    s = 1.0 / pose.scale
    xs, ys = (x - pose.shift[0]) * s, (y - pose.shift[1]) * s
    ca, sa = np.cos(pose.angle), np.sin(pose.angle)
    lx = -(xs * ca - ys * sa)  # world R->L flip (radiological display)
    ly = xs * sa + ys * ca
    lx, ly = np.broadcast_arrays(lx, ly)
    lz = ly * np.sin(pose.pitch) + lx * np.sin(pose.roll)
    world = np.stack([lx + centre[0], ly * np.cos(pose.pitch) + centre[1], lz + z_world, np.ones_like(lx)])
    vox = np.tensordot(np.linalg.inv(tpl.affine), world.reshape(4, -1), axes=1)[:3]
    out = ndimage.map_coordinates(vol, vox.astype(np.float32), order=1, mode="constant", cval=0.0)
    return out.reshape(lx.shape).astype(np.float32)
