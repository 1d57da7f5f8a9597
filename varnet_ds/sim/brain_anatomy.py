"""Real brain anatomy for the simulator: the MNI152 T1 template with a synthetic skull, re-contrasted to
T1/T2/FLAIR/T1-post.

The template is one pinned, sha256-verified file on every machine (:mod:`varnet_ds.sim.anatomy`: nilearn 0.14.1's
skull-stripped ICBM 2009a symmetric MNI152 T1, 1 mm); a missing or different file stops with the command that
installs it. A synthetic skull, marrow and scalp are layered around the intracranial space. Tissue classes are
defined by T1 intensity (CSF < GM < WM; fat brightest) inside and outside the intracranial mask and remapped to
each contrast on the 1 mm template grid (so partial volumes mix signals, not labels); axial slices are then sampled
with trilinear interpolation at any pose. The template and every contrast volume are computed once per process.

Dtypes are explicit wherever numpy 1 and 2 promote differently (NEP 50): volumes are float32, slice coordinates
and every scalar derived from the template float64.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import nibabel as nib
import numpy as np
from scipy import ndimage

from varnet_ds.sim import anatomy

CONTRASTS = ("T1", "T2", "FLAIR", "T1POST")

# T1 intensity (white matter = 1) -> signal, inside and outside the intracranial mask
_INTRA_KNOTS = [0.0, 0.30, 0.45, 0.62, 0.78, 0.92, 1.05, 3.0]
_EXTRA_KNOTS = [0.0, 0.15, 0.40, 0.70, 1.20, 1.60, 3.0]
_MAPS = {
    "T1": ([0.06, 0.16, 0.30, 0.46, 0.58, 0.72, 0.82, 0.90], [0.0, 0.03, 0.20, 0.40, 0.70, 0.90, 1.0]),
    "T2": ([1.00, 0.97, 0.82, 0.62, 0.56, 0.46, 0.40, 0.40], [0.0, 0.04, 0.18, 0.28, 0.55, 0.72, 0.75]),
    "FLAIR": ([0.03, 0.05, 0.28, 0.56, 0.62, 0.52, 0.46, 0.46], [0.0, 0.03, 0.15, 0.25, 0.45, 0.60, 0.62]),
}
# synthetic head layers outside the intracranial space: distance (mm) -> T1 intensity (dura/CSF, inner table,
# marrow, outer table, scalp fat, galea/skin, air)
_LAYER_MM = [0, 0.5, 1.5, 2.5, 3.5, 5.0, 6.5, 7.5, 9.0, 9.5, 14, 14.5, 15.5, 16.5]
_LAYER_T1 = [0.25, 0.25, 0.05, 0.05, 0.6, 0.6, 0.05, 0.45, 0.45, 1.7, 1.7, 0.8, 0.8, 0.0]


@dataclass(frozen=True)
class BrainTemplate:
    """A T1 head template on its voxel grid.

    Attributes:
        t1: ``[X, Y, Z]`` float32 T1 intensities, white matter about 1.
        intracranial: ``[X, Y, Z]`` float32 soft mask of brain + CSF inside the skull.
        affine: ``[4, 4]`` float64 voxel -> world (RAS, mm).
        source: name of the anatomy source (:data:`varnet_ds.sim.anatomy.NAME`), stored in the h5 attrs.
        sha256: sha256 of the source file (:data:`varnet_ds.sim.anatomy.SHA256`), stored in the h5 attrs.
    """

    t1: np.ndarray
    intracranial: np.ndarray
    affine: np.ndarray
    source: str
    sha256: str

    @property
    def centre(self) -> np.ndarray:
        """``[3]`` float64 world coordinates (mm) of the centre of the intracranial mask."""
        idx = np.argwhere(self.intracranial > np.float32(0.5))
        mid = (idx.min(0) + idx.max(0)).astype(np.float64) / 2.0
        return (self.affine @ np.append(mid, 1.0))[:3]

    @property
    def z_range(self) -> Tuple[float, float]:
        """World ``z`` (mm) of the lowest and highest intracranial voxel."""
        idx = np.argwhere(self.intracranial.max(axis=(0, 1)) > np.float32(0.5))[:, 0].astype(np.float64)
        zs = self.affine[2, 2] * idx + self.affine[2, 3]
        return float(zs.min()), float(zs.max())


def _wm_peak(values: np.ndarray) -> float:
    """Intensity of the white-matter histogram peak (mode of the upper half of brain intensities), float64."""
    hi = values[values > np.median(values)].astype(np.float64)
    hist, edges = np.histogram(hi, bins=64)
    i = int(np.argmax(hist))
    return 0.5 * (float(edges[i]) + float(edges[i + 1]))


def _load_mni(path: Path) -> BrainTemplate:
    """The verified MNI152 file (skull-stripped) + a synthetic skull and scalp."""
    img = nib.load(str(path))
    raw = np.asarray(img.dataobj.get_unscaled())  # uint8 on disk, no scaling (the file is sha256-pinned)
    raw = raw.astype(np.float32) / np.float32(raw.max())  # 0..1, as nilearn's load_mni152_template
    brain = ndimage.binary_fill_holes(raw > np.float32(0.05))
    t1 = raw / np.float32(_wm_peak(raw[brain]))
    intracranial = ndimage.binary_dilation(brain, iterations=2)
    # distance (mm) outside the intracranial space, on a 2 mm grid for speed
    coarse = ndimage.distance_transform_edt(~intracranial[::2, ::2, ::2]).astype(np.float64) * 2.0
    dist = ndimage.zoom(coarse, 2, order=1)[: t1.shape[0], : t1.shape[1], : t1.shape[2]]
    pad = [(0, s - d) for s, d in zip(t1.shape, dist.shape)]
    dist = np.pad(dist, pad, mode="edge").astype(np.float32)
    layers = np.interp(dist.astype(np.float64), _LAYER_MM, _LAYER_T1).astype(np.float32)
    outside = ~intracranial
    t1[outside] = layers[outside]
    soft = ndimage.gaussian_filter(intracranial.astype(np.float32), 0.7)
    return BrainTemplate(t1.astype(np.float32), soft.astype(np.float32), np.asarray(img.affine, np.float64),
                         anatomy.NAME, anatomy.SHA256)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str) -> BrainTemplate:
    return _load_mni(Path(path))


def load_template() -> BrainTemplate:
    """The brain template (loaded once per process from :func:`varnet_ds.sim.anatomy.require`).

    Raises:
        varnet_ds.sim.anatomy.AnatomySourceError: the anatomy file is missing or not the pinned one; the message
            names it and the command that installs it.
    """
    return _load_cached(str(anatomy.require()))


def _noise3d(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return f / np.float32(f.std(dtype=np.float64) + 1e-8)


def contrast_volume(contrast: str) -> np.ndarray:
    """Template remapped to ``contrast`` (one of :data:`CONTRASTS`), ``[X, Y, Z]`` float32, cached."""
    if contrast not in CONTRASTS:
        raise ValueError(f"brain contrast must be one of {CONTRASTS}, got {contrast!r}")
    return _contrast_cached(contrast, str(anatomy.require()))


@functools.lru_cache(maxsize=8)
def _contrast_cached(contrast: str, path: str) -> np.ndarray:
    tpl = _load_cached(path)
    base = "T1" if contrast == "T1POST" else contrast
    intra_vals, extra_vals = _MAPS[base]
    v, ic = tpl.t1, tpl.intracranial
    v64 = v.astype(np.float64)
    intra = np.interp(v64, _INTRA_KNOTS, intra_vals).astype(np.float32)
    extra = np.interp(v64, _EXTRA_KNOTS, extra_vals).astype(np.float32)
    out = extra + ic * (intra - extra)
    if contrast == "T1POST":
        # gadolinium: enhancing dura at the intracranial boundary and the falx, vessels in the sulcal CSF
        rng = np.random.default_rng(20240527)  # fixed: anatomy, not per volume
        small = tuple(s // 2 + 1 for s in v.shape)
        n1, n2 = _noise3d(rng, small, 2.0), _noise3d(rng, small, 2.0)
        vessels = np.exp(-(n1.astype(np.float64) ** 2 + n2.astype(np.float64) ** 2) / 0.02).astype(np.float32)
        vessels = ndimage.zoom(vessels, 2, order=1)[: v.shape[0], : v.shape[1], : v.shape[2]]
        vessels = np.pad(vessels, [(0, s - d) for s, d in zip(v.shape, vessels.shape)])
        csf = np.clip((np.float32(0.55) - v) / np.float32(0.25), np.float32(0), np.float32(1)) * ic
        dura = np.float32(4) * ic * (np.float32(1) - ic)
        mid = int(round(float(np.linalg.solve(tpl.affine, np.append(tpl.centre, 1.0))[0])))
        falx = np.zeros_like(v)
        falx[mid - 1 : mid + 2] = 1.0
        falx *= csf
        out = out + np.float32(0.45) * dura + np.float32(0.5) * csf * vessels + np.float32(0.25) * falx
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
        angle=math.radians(rng.uniform(-8, 8)),
        pitch=math.radians(rng.uniform(-6, 6)),
        roll=math.radians(rng.uniform(-3, 3)),
        scale=float(rng.uniform(0.92, 1.08)),
        shift=(float(rng.uniform(-8, 8)), float(rng.uniform(-10, 10))),
        z_span=(float(z0 + rng.uniform(30, 55)), float(z1 - rng.uniform(8, 25))),
    )


def brain_slice(pose: BrainPose, x: np.ndarray, y: np.ndarray, z_world: float, contrast: str) -> np.ndarray:
    """Sample one axial slice of the re-contrasted template.

    Args:
        pose: volume pose.
        x: ``[1, W]`` column coordinates (mm); columns run from patient right to left (radiological).
        y: ``[H, 1]`` row coordinates (mm), up = anterior.
        z_world: slice height (world mm).
        contrast: one of :data:`CONTRASTS`.

    Returns:
        ``[H, W]`` float32 magnitude image (about 0..1); the sampling coordinates are float64.
    """
    tpl = load_template()
    vol = contrast_volume(contrast)
    centre = tpl.centre
    s = 1.0 / pose.scale
    xs = (np.asarray(x, np.float64) - pose.shift[0]) * s
    ys = (np.asarray(y, np.float64) - pose.shift[1]) * s
    ca, sa = math.cos(pose.angle), math.sin(pose.angle)
    lx = -(xs * ca - ys * sa)  # world R->L flip (radiological display)
    ly = xs * sa + ys * ca
    lx, ly = np.broadcast_arrays(lx, ly)
    lz = ly * math.sin(pose.pitch) + lx * math.sin(pose.roll)
    world = np.stack([lx + centre[0], ly * math.cos(pose.pitch) + centre[1], lz + float(z_world),
                      np.ones_like(lx)])
    vox = np.tensordot(np.linalg.inv(tpl.affine), world.reshape(4, -1), axes=1)[:3]
    out = ndimage.map_coordinates(vol, vox, order=1, mode="constant", cval=0.0)
    return out.reshape(lx.shape).astype(np.float32)
