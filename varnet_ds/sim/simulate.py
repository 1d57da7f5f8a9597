"""One simulated fastMRI multicoil volume: its random specification and its slices (k-space + RSS target).

:func:`make_spec` turns ``(anatomy, index, seed)`` and optional overrides into a :class:`VolumeSpec` (sizes,
padding, coils, contrast, SNR, scanner, file name); :func:`simulate_volume` renders the anatomy on a 2x finer
grid, band-limits it to the k-space matrix, applies coil sensitivities, phase-encode zero padding and
correlated noise, scales the volume to fastMRI-like magnitudes, and yields per-slice ``(kspace, target)``.
Everything is a deterministic function of the seed (and, for brains, of the one pinned anatomy file,
:mod:`varnet_ds.sim.anatomy`); :data:`GENERATOR_VERSION` names the generator in the files' attrs and in the demo's
data manifest, and goes up with every change that changes the simulated bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from varnet_ds.sim import brain_anatomy, knee_phantom, mri_physics

ANATOMIES = ("knee", "brain")
ACQUISITION_CONTRAST = {
    "knee": {"CORPD_FBK": "PD", "CORPDFS_FBK": "PDFS"},
    "brain": {"AXT1": "T1", "AXT1PRE": "T1", "AXT2": "T2", "AXFLAIR": "FLAIR", "AXT1POST": "T1POST"},
}
DEFAULT_ACQUISITIONS = {"knee": ("CORPD_FBK", "CORPDFS_FBK"), "brain": ("AXT1", "AXT2", "AXFLAIR", "AXT1POST")}
KNEE_SOURCE = "procedural phantom"
# 1: Colin27 or nilearn's MNI152, numpy-dependent dtypes; 2: the pinned MNI152 file only, explicit dtypes
GENERATOR_VERSION = 2
MAX_VOLUMES = 1000  # file names encode seed * 1000 + index
FINE_FACTOR = 2  # the object is drawn on a grid this many times finer than the k-space matrix
_RECON_FOV_MM = {"knee": 140.0, "brain": 220.0}
_MIN_PHASE_FOV_MM = {"knee": 150.0, "brain": 178.0}
_SNR = {"PD": (12, 30), "PDFS": (5, 10), "T1": (12, 30), "T2": (15, 35), "FLAIR": (8, 18), "T1POST": (12, 30)}
_SCANNERS = (("Skyra", 2.89362), ("Prisma_fit", 2.89362), ("Biograph_mMR", 2.89362), ("Aera", 1.494),
             ("Avanto", 1.494), ("TrioTim", 2.89362))


@dataclass(frozen=True)
class VolumeSpec:
    """Everything that defines one simulated volume (sizes in pixels, lengths in mm)."""

    anatomy: str
    index: int
    seed: int
    acquisition: str
    contrast: str
    shape: Tuple[int, int]  # k-space (H, W)
    recon_size: Tuple[int, int]
    pad: Tuple[int, int]  # zero phase-encode columns (left, right)
    num_slices: int
    num_coils: int
    pixel_mm: float
    slice_mm: float
    snr: float
    target_max: float
    fname: str
    patient_id: str
    system_model: str
    field_strength: float

    @property
    def acquired(self) -> Tuple[int, int]:
        """First and one-past-last sampled phase-encode column."""
        return self.pad[0], self.shape[1] - self.pad[1]


def _pair(value, name: str) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"{name} must look like HxW (e.g. 640x368), got {value!r}")
        value = (int(parts[0]), int(parts[1]))
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two integers (H, W), got {value!r}") from None
    if h < 8 or w < 8:
        raise ValueError(f"{name} must be at least 8x8, got {h}x{w}")
    return h, w


def default_recon_size(shape: Tuple[int, int]) -> Tuple[int, int]:
    """fastMRI-like crop for a 2x readout-oversampled matrix: ``(H // 2, min(H // 2, W))``."""
    return shape[0] // 2, min(shape[0] // 2, shape[1])


def make_spec(anatomy: str, index: int, seed: int, shape=None, recon_size=None, slices: Optional[int] = None,
              coils: Optional[int] = None, acquisitions: Optional[Sequence[str]] = None) -> VolumeSpec:
    """Draw the specification of volume ``index`` of a dataset with ``seed`` (overrides win over defaults).

    Raises:
        ValueError: naming the offending argument and value.
    """
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0 <= index < MAX_VOLUMES:
        raise ValueError(f"volume index must be in [0, {MAX_VOLUMES}), got {index}")
    cycle = tuple(acquisitions) if acquisitions else DEFAULT_ACQUISITIONS[anatomy]
    for acq in cycle:
        if acq not in ACQUISITION_CONTRAST[anatomy]:
            raise ValueError(f"acquisition {acq!r} is not a {anatomy} acquisition; "
                             f"choose from {sorted(ACQUISITION_CONTRAST[anatomy])}")
    acq = cycle[index % len(cycle)]
    contrast = ACQUISITION_CONTRAST[anatomy][acq]
    # every random property is drawn unconditionally, in a fixed order, so that an override (e.g. --slices)
    # does not change the others
    rng = np.random.default_rng([seed, index, ANATOMIES.index(anatomy), 0])
    u = rng.uniform(size=8)
    narrow_width = int(rng.choice([264, 272]))
    random_slices = int(rng.integers(10, 17)) if anatomy == "knee" else int(rng.integers(8, 17))
    random_coils = 15 if anatomy == "knee" else int(rng.choice([16, 20]))
    model, field = _SCANNERS[int(rng.integers(len(_SCANNERS)))]
    site = int(rng.integers(200, 211))
    patient_id = rng.bytes(32).hex()

    shape_ = _pair(shape, "shape")
    if shape_ is None:  # some brain FLAIR volumes are narrower, like fastMRI's "FLAIR 203" cases
        narrow = anatomy == "brain" and acq == "AXFLAIR" and u[0] < 0.5
        shape_ = (640, 368) if anatomy == "knee" else (640, narrow_width if narrow else 320)
    recon = _pair(recon_size, "recon_size") if recon_size is not None else default_recon_size(shape_)
    if recon[0] > shape_[0] or recon[1] > shape_[1] or min(recon) < 1:
        raise ValueError(f"recon_size {recon[0]}x{recon[1]} must fit inside the k-space shape {shape_[0]}x{shape_[1]}")
    if slices is not None and (int(slices) != slices or slices < 1):
        raise ValueError(f"slices must be a positive integer, got {slices!r}")
    if coils is not None and (int(coils) != coils or not 1 <= coils <= 64):
        raise ValueError(f"coils must be an integer in [1, 64], got {coils!r}")
    w = shape_[1]
    if anatomy == "knee":  # fastMRI knee: about 17 zero columns on each side of 368
        pads = tuple(max(1, int(round(w * (0.042 + 0.008 * f)))) for f in u[1:3])
        log_max = math.log(2e-4) + float(u[3]) * math.log(5.0) + (math.log(0.6) if contrast == "PDFS" else 0.0)
    else:
        pads = (0, 0) if u[4] < 0.5 else tuple(int(round(w * 0.03 * f)) for f in u[1:3])
        log_max = math.log(1.5e-4) + float(u[3]) * math.log(4.0)
    if w - pads[0] - pads[1] < w // 2 + 2:
        pads = (0, 0)
    pixel = max(_RECON_FOV_MM[anatomy] / recon[0], _MIN_PHASE_FOV_MM[anatomy] / w)
    snr_lo, snr_hi = _SNR[contrast]
    ident = 1_000_000 * (1 if anatomy == "knee" else 6) + seed * MAX_VOLUMES + index
    fname = f"file{ident}.h5" if anatomy == "knee" else f"file_brain_{acq}_{site}_{ident}.h5"
    return VolumeSpec(
        anatomy=anatomy, index=index, seed=int(seed), acquisition=acq, contrast=contrast, shape=shape_,
        recon_size=recon, pad=(int(pads[0]), int(pads[1])),
        num_slices=int(slices) if slices is not None else random_slices,
        num_coils=int(coils) if coils is not None else random_coils,
        pixel_mm=float(pixel), slice_mm=3.0 if anatomy == "knee" else 5.0,
        snr=float(snr_lo + u[5] * (snr_hi - snr_lo)), target_max=math.exp(log_max), fname=fname,
        patient_id=patient_id, system_model=model, field_strength=field,
    )


def _coil_array(rng: np.random.Generator, anatomy: str, n: int) -> mri_physics.CoilArray:
    """Loops on a cylinder around the leg (axis along the rows) or around the head (axis = slice direction)."""
    if anatomy == "knee":
        rings = 3 if n >= 9 else (2 if n >= 4 else 1)
        heights = np.linspace(-55, 55, rings) if rings > 1 else np.zeros(1)
        ring = np.arange(n) % rings
        theta = 2 * np.pi * (np.arange(n) // rings) / max(1, -(-n // rings)) + ring * 0.6 + rng.uniform(0, 2 * np.pi)
        radius = rng.uniform(82, 95)
        centres = np.stack([radius * np.cos(theta), heights[ring], radius * np.sin(theta)], 1)
        loop = rng.uniform(40, 50, n)
    else:
        top = 4 if n >= 20 else 0
        side = n - top
        rings = 2 if side >= 4 else 1
        ring = np.arange(side) % rings
        theta = 2 * np.pi * (np.arange(side) // rings) / max(1, -(-side // rings)) + ring * 0.4
        theta = theta + rng.uniform(0, 2 * np.pi)
        zr = np.array([-25.0, 30.0])[:rings] if rings > 1 else np.zeros(1)
        centres = np.stack([108 * np.cos(theta), 128 * np.sin(theta), zr[ring]], 1)
        if top:
            t = 2 * np.pi * np.arange(top) / top + rng.uniform(0, 2 * np.pi)
            centres = np.concatenate([centres, np.stack([60 * np.cos(t), 70 * np.sin(t), np.full(top, 85.0)], 1)])
        loop = rng.uniform(50, 62, n)
    centres = centres + rng.normal(0, 3.0, centres.shape)
    chol = mri_physics.noise_cholesky(rng, centres, float(rng.uniform(0.05, 0.3)), 70.0)
    return mri_physics.CoilArray(
        centres=centres, radii=loop, gains=rng.uniform(0.8, 1.2, n), phase0=rng.uniform(-np.pi, np.pi, n),
        phase_grad=rng.normal(0, 2 * np.pi / 700, (n, 3)), noise_chol=chol,
    )


def anatomy_attrs(spec: VolumeSpec) -> Dict[str, str]:
    """What the anatomy was made from: ``anatomy_source`` (a name) and, for brains, ``anatomy_sha256``.

    Raises:
        varnet_ds.sim.anatomy.AnatomySourceError: a brain, and the anatomy file is missing or not the pinned one.
    """
    if spec.anatomy == "knee":
        return {"anatomy_source": KNEE_SOURCE}
    tpl = brain_anatomy.load_template()
    return {"anatomy_source": tpl.source, "anatomy_sha256": tpl.sha256}


def simulate_volume(spec: VolumeSpec) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Simulate the slices of one volume.

    Args:
        spec: the volume specification.

    Raises:
        varnet_ds.sim.anatomy.AnatomySourceError: a brain, and the anatomy file is missing or not the pinned one
            (before anything is yielded).

    Yields:
        per slice ``(kspace [C, H, W] complex64, target [rH, rW] float32)``, where ``target`` is exactly
        fastMRI's ``center_crop(rss(complex_abs(ifft2c(kspace))))``.
    """
    rng = np.random.default_rng([spec.seed, spec.index, ANATOMIES.index(spec.anatomy), 1])
    h, w = spec.shape
    fine_shape = (FINE_FACTOR * h, FINE_FACTOR * w)
    xf, yf = mri_physics.grid_mm(fine_shape, spec.pixel_mm / FINE_FACTOR)
    x, y = mri_physics.grid_mm(spec.shape, spec.pixel_mm)
    coils = _coil_array(rng, spec.anatomy, spec.num_coils)
    extent = 0.5 * spec.pixel_mm * max(spec.recon_size)
    base_phase = rng.normal(0, 1, 6)

    if spec.anatomy == "knee":
        params = knee_phantom.sample_knee_params(rng)
        positions = np.linspace(*params.z_span, spec.num_slices)
        coil_z = positions

        def render(i: int) -> np.ndarray:
            return knee_phantom.knee_slice(params, xf, yf, float(positions[i]), spec.contrast,
                                           spec.pixel_mm / FINE_FACTOR, i)
    else:
        tpl = brain_anatomy.load_template()
        pose = brain_anatomy.sample_brain_pose(rng, tpl)
        positions = np.linspace(*pose.z_span, spec.num_slices)
        coil_z = positions - float(tpl.centre[2])

        def render(i: int) -> np.ndarray:
            return brain_anatomy.brain_slice(pose, xf, yf, float(positions[i]), spec.contrast)

    # pass 1: band-limited complex object images and a noiseless RSS estimate for scaling and noise level
    objects, est = [], []
    r0, c0 = h // 2 - spec.recon_size[0] // 2, w // 2 - spec.recon_size[1] // 2
    crop = (slice(r0, r0 + spec.recon_size[0]), slice(c0, c0 + spec.recon_size[1]))
    for i in range(spec.num_slices):
        slice_rng = np.random.default_rng([spec.seed, spec.index, ANATOMIES.index(spec.anatomy), 2, i])
        phase = mri_physics.smooth_phase(slice_rng, x, y, extent, strength=0.3)
        phase += _poly_phase(base_phase, x / extent, y / extent)
        band_limited = mri_physics.downsample_via_kspace(render(i), spec.shape).astype(np.complex128)
        obj = (band_limited * np.exp(1j * phase.astype(np.float64))).astype(np.complex64)
        objects.append(obj)
        shading = mri_physics.coil_rss(coils, x, y, float(coil_z[i])).astype(np.float64)
        est.append((np.abs(obj.astype(np.complex128)) * shading)[crop])
    est_arr = np.stack(est)  # float64
    peak = float(np.percentile(est_arr, 99.95))
    if peak <= 0:
        raise RuntimeError(f"{spec.fname}: simulated volume is empty (check shape/recon_size)")
    level = float(est_arr[est_arr > 0.2 * peak].mean(dtype=np.float64))
    scale = spec.target_max / peak
    sigma = level / (spec.snr * math.sqrt(spec.num_coils)) * scale

    # pass 2: coil images -> k-space with zero padding and correlated noise -> fastMRI target
    for i, obj in enumerate(objects):
        sens = mri_physics.coil_sensitivities(coils, x, y, float(coil_z[i]))
        kspace = mri_physics.acquire((obj * np.float32(scale)).astype(np.complex64), sens, spec.pad, sigma,
                                     coils.noise_chol, rng)
        yield kspace, mri_physics.rss_target(kspace, spec.recon_size)


def _poly_phase(c: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Volume-wide smooth phase (rad) from 6 float64 coefficients on normalised coordinates, computed in float64.

    Args:
        c: ``[6]`` coefficients.
        u: ``[1, W]`` normalised column coordinates.
        v: ``[H, 1]`` normalised row coordinates.

    Returns:
        ``[H, W]`` float32 phase.
    """
    c = [float(ci) for ci in c]
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    return (math.pi * c[0] + c[1] * u + c[2] * v + 0.5 * (c[3] * u * u + c[4] * u * v + c[5] * v * v)).astype(
        np.float32)
