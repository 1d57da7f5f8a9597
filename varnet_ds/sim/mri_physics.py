"""MR acquisition physics for the simulator: grids, object phase, coil sensitivities, noise and k-space.

The object is drawn on a grid ``factor`` times finer than the target matrix; its centred k-space is cropped to
the target size (so the discretisation of the phantom is not the one of the reconstruction, i.e. no "inverse
crime"), multiplied by smooth non-normalised coil sensitivities, Fourier transformed, zero-padded in the phase
direction and corrupted by coil-correlated complex Gaussian noise. Results are float32/complex64 numpy arrays.

Dtypes are explicit so that numpy 1 and 2 (whose promotion rules, NEP 50, and ``np.fft`` differ) and CPUs with
different SIMD paths give the same bits: FFTs (``scipy.fft``, the same pocketfft under numpy 1 and 2), complex
products, phases and the coil noise are computed in float64/complex128 and rounded to float32/complex64 once; the
coil noise is mixed without BLAS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import fastmri
import numpy as np
import scipy.fft
import torch
from fastmri.data import transforms as fastmri_transforms


@dataclass(frozen=True)
class CoilArray:
    """Receive coil array geometry and noise properties (one per volume).

    Attributes:
        centres: ``[C, 3]`` loop centres in mm (x: columns, y: rows/up, z: slice direction).
        radii: ``[C]`` loop radii in mm (sets the depth of the sensitivity falloff).
        gains: ``[C]`` relative receive gains.
        phase0: ``[C]`` constant phase of each coil (rad).
        phase_grad: ``[C, 3]`` linear phase gradient of each coil (rad/mm).
        noise_chol: ``[C, C]`` complex Cholesky factor of the noise covariance (mean variance 1).
    """

    centres: np.ndarray
    radii: np.ndarray
    gains: np.ndarray
    phase0: np.ndarray
    phase_grad: np.ndarray
    noise_chol: np.ndarray

    @property
    def num_coils(self) -> int:
        return int(self.centres.shape[0])


def grid_mm(shape: Tuple[int, int], pixel_mm: float) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of an image grid whose index ``N // 2`` is the origin (fastMRI's DC convention).

    Args:
        shape: ``(H, W)`` rows (readout, "y" pointing up) and columns (phase encode, "x").
        pixel_mm: pixel size in mm.

    Returns:
        ``(x, y)`` float32 arrays of shape ``[1, W]`` and ``[H, 1]``; ``y`` increases towards the top row.
    """
    h, w = shape
    x = ((np.arange(w) - w // 2) * pixel_mm).astype(np.float32)[None, :]
    y = (-(np.arange(h) - h // 2) * pixel_mm).astype(np.float32)[:, None]
    return x, y


def fft2c(x: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2D FFT over the last two axes (same convention as ``fastmri.fft2c``), complex128.

    Args:
        x: ``[..., H, W]`` real or complex array (converted to complex128: numpy 1 and 2 differ for complex64).

    Returns:
        ``[..., H, W]`` complex128.
    """
    x = np.fft.ifftshift(np.asarray(x, np.complex128), axes=(-2, -1))
    x = scipy.fft.fft2(x, norm="ortho", workers=1)
    return np.fft.fftshift(x, axes=(-2, -1))


def ifft2c(k: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2D inverse FFT over the last two axes (same convention as ``fastmri.ifft2c``), complex128.

    Args:
        k: ``[..., H, W]`` real or complex array (converted to complex128).

    Returns:
        ``[..., H, W]`` complex128.
    """
    k = np.fft.ifftshift(np.asarray(k, np.complex128), axes=(-2, -1))
    k = scipy.fft.ifft2(k, norm="ortho", workers=1)
    return np.fft.fftshift(k, axes=(-2, -1))


def downsample_via_kspace(fine: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Band-limit a finely sampled image to ``shape`` by cropping the centre of its k-space.

    Args:
        fine: ``[Hf, Wf]`` real or complex image sampled on the fine grid (same FOV as the target).
        shape: target ``(H, W)`` with ``H <= Hf`` and ``W <= Wf``.

    Returns:
        ``[H, W]`` complex64 image with the same amplitude scale as ``fine``.
    """
    hf, wf = fine.shape
    h, w = shape
    k = fft2c(fine)
    r0, c0 = hf // 2 - h // 2, wf // 2 - w // 2
    k = k[r0 : r0 + h, c0 : c0 + w] * math.sqrt(h * w / (hf * wf))
    return ifft2c(k).astype(np.complex64)


def smooth_phase(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, extent_mm: float,
                 strength: float = 1.0) -> np.ndarray:
    """Random smooth low-order (quadratic) background phase.

    Args:
        rng: random generator.
        x: ``[1, W]`` column coordinates in mm.
        y: ``[H, 1]`` row coordinates in mm.
        extent_mm: half-size used to normalise coordinates to about ``[-1, 1]``.
        strength: standard deviation scale of the polynomial coefficients (rad).

    Returns:
        ``[H, W]`` float32 phase in radians.
    """
    u, v = x / extent_mm, y / extent_mm
    c = rng.normal(0.0, strength, size=6).astype(np.float32)
    c[0] = rng.uniform(-np.pi, np.pi)
    c[3:] *= 0.5
    return (c[0] + c[1] * u + c[2] * v + c[3] * u * u + c[4] * u * v + c[5] * v * v).astype(np.float32)


def noise_cholesky(rng: np.random.Generator, centres: np.ndarray, correlation: float,
                   length_mm: float) -> np.ndarray:
    """Cholesky factor of a coil noise covariance with distance-dependent complex correlation.

    Args:
        rng: random generator.
        centres: ``[C, 3]`` coil centres in mm.
        correlation: off-diagonal correlation strength of neighbouring coils (0..1).
        length_mm: distance over which the correlation decays.

    Returns:
        ``[C, C]`` complex128 lower-triangular ``L`` with ``L @ L^H`` = covariance (mean diagonal 1).
    """
    c = centres.shape[0]
    dist = np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=-1)
    kernel = np.exp(-0.5 * (dist / length_mm) ** 2)
    theta = rng.uniform(-0.6, 0.6, size=c)
    phase = np.exp(1j * (theta[:, None] - theta[None, :]))  # rank-1 PSD, so the Schur product stays PSD
    corr = (1 - correlation) * np.eye(c) + correlation * kernel * phase
    corr = 0.5 * (corr + corr.conj().T) + 1e-6 * np.eye(c)
    sd = rng.uniform(0.8, 1.25, size=c)
    cov = corr * sd[:, None] * sd[None, :]
    cov /= np.real(np.trace(cov)) / c
    return np.linalg.cholesky(cov)


def _coil_magnitude(coils: CoilArray, x: np.ndarray, y: np.ndarray, z_mm: float) -> np.ndarray:
    cx, cy, cz = (coils.centres[:, i].astype(np.float32)[:, None, None] for i in range(3))
    a2 = (coils.radii.astype(np.float32) ** 2)[:, None, None]
    t = a2 / ((x[None] - cx) ** 2 + ((y[None] - cy) ** 2 + (np.float32(z_mm) - cz) ** 2 + a2))
    return coils.gains.astype(np.float32)[:, None, None] * t * np.sqrt(t)


def coil_sensitivities(coils: CoilArray, x: np.ndarray, y: np.ndarray, z_mm: float) -> np.ndarray:
    """Complex, non-normalised receive sensitivities of circular loops (on-axis Biot-Savart falloff).

    ``|S_c| = g_c (a_c^2 / (a_c^2 + d^2))^{3/2}`` with ``d`` the distance from the loop centre, and a smooth
    phase that is linear in position.

    Args:
        coils: coil array.
        x: ``[1, W]`` column coordinates in mm.
        y: ``[H, 1]`` row coordinates in mm.
        z_mm: position of the slice along the slice direction.

    Returns:
        ``[C, H, W]`` complex64 sensitivities.
    """
    mag = _coil_magnitude(coils, x, y, z_mm).astype(np.float64)
    g = np.asarray(coils.phase_grad, np.float64)
    const = np.exp(1j * (np.asarray(coils.phase0, np.float64) + g[:, 2] * float(z_mm)))[:, None, None]
    ramp_x = np.exp(1j * (g[:, 0, None, None] * np.asarray(x, np.float64)[None]))  # [C, 1, W]
    ramp_y = np.exp(1j * (g[:, 1, None, None] * np.asarray(y, np.float64)[None]))  # [C, H, 1]
    return (mag * (const * ramp_y) * ramp_x).astype(np.complex64)


def coil_rss(coils: CoilArray, x: np.ndarray, y: np.ndarray, z_mm: float) -> np.ndarray:
    """Root-sum-of-squares of the sensitivity magnitudes, ``[H, W]`` float32 (cheap shading estimate)."""
    mag = _coil_magnitude(coils, x, y, z_mm)
    return np.sqrt((mag * mag).sum(0)).astype(np.float32)


def acquire(image: np.ndarray, sens: np.ndarray, pad: Tuple[int, int], sigma: float,
            noise_chol: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multicoil k-space of one slice: ``fft2c(S_c * image)``, phase-encode zero padding, correlated noise.

    Args:
        image: ``[H, W]`` complex object image (already band-limited to the target grid).
        sens: ``[C, H, W]`` complex coil sensitivities.
        pad: ``(left, right)`` number of zero phase-encode columns on each side.
        sigma: per-coil noise standard deviation (complex, ``E|n|^2 = sigma^2``) in k-space.
        noise_chol: ``[C, C]`` Cholesky factor of the coil noise covariance.
        rng: random generator.

    Returns:
        ``[C, H, W]`` complex64 k-space; columns outside ``[left, W - right)`` are exactly zero.
    """
    c, h, w = sens.shape
    left, right = pad
    # complex64 inputs multiplied in complex128 are exact up to one rounding, with or without FMA
    kspace = fft2c(sens.astype(np.complex128) * image.astype(np.complex128)[None])
    stop = w - right
    n = rng.standard_normal((2, c, h * (stop - left)), dtype=np.float32).astype(np.float64)
    white = (n[0] + 1j * n[1]) * (math.sqrt(0.5) * float(sigma))
    chol = np.asarray(noise_chol, np.complex128)
    coloured = np.zeros_like(white)
    for j in range(c):  # chol @ white without BLAS, whose kernels (and summation order) depend on the CPU
        coloured += chol[:, j, None] * white[j]
    kspace[:, :, left:stop] += coloured.reshape(c, h, stop - left)
    kspace[:, :, :left] = 0
    kspace[:, :, stop:] = 0
    return kspace.astype(np.complex64)


def rss_target(kspace: np.ndarray, recon_size: Tuple[int, int]) -> np.ndarray:
    """fastMRI's multicoil target: ``center_crop(rss(complex_abs(ifft2c(kspace))), recon_size)``.

    Args:
        kspace: ``[C, H, W]`` complex64 k-space.
        recon_size: ``(rH, rW)`` crop.

    Returns:
        ``[rH, rW]`` float32 target, computed with fastMRI's own functions in float64 and rounded once.
    """
    k = fastmri_transforms.to_tensor(np.ascontiguousarray(kspace, dtype=np.complex128))
    with torch.no_grad():
        image = fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(k)), dim=0)
        return fastmri_transforms.center_crop(image, tuple(recon_size)).numpy().astype(np.float32)
