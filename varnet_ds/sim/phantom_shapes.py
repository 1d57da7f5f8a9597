"""2D signed-distance primitives, random texture fields and a windowed painter for procedural phantoms.

Distances are in mm (negative inside). :class:`Canvas` holds a posed local coordinate system ``(u, v)`` over
an image grid and paints anti-aliased shapes only inside their bounding boxes, which keeps large (2x
oversampled) grids fast.

Images are float32. Scalars are Python floats or ``np.float32`` (never ``np.float64``, which numpy 1 and 2 promote
differently, NEP 50), scalar trigonometry uses :mod:`math`, and the transcendental functions of arrays
(:func:`exp32`, :func:`sin32`, :func:`cos32`, :func:`tanh32`) are evaluated in float64 and rounded to float32 once,
so that numpy's float32 SIMD approximations (which differ between CPUs and numpy versions) do not change the bits.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple, Union

import numpy as np
from scipy import ndimage

Box = Tuple[float, float, float, float]  # u0, u1, v0, v1 in local mm
Field = Union[float, np.ndarray, Callable[[np.ndarray, np.ndarray], np.ndarray]]


def exp32(x) -> np.ndarray:
    """``exp(x)`` evaluated in float64, as float32."""
    return np.exp(np.asarray(x, np.float64)).astype(np.float32)


def sin32(x) -> np.ndarray:
    """``sin(x)`` evaluated in float64, as float32."""
    return np.sin(np.asarray(x, np.float64)).astype(np.float32)


def cos32(x) -> np.ndarray:
    """``cos(x)`` evaluated in float64, as float32."""
    return np.cos(np.asarray(x, np.float64)).astype(np.float32)


def tanh32(x) -> np.ndarray:
    """``tanh(x)`` evaluated in float64, as float32."""
    return np.tanh(np.asarray(x, np.float64)).astype(np.float32)


def inside(d: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased occupancy of the region ``d < 0`` (linear ramp ``width`` wide)."""
    return np.clip(0.5 - d / np.float32(width), 0.0, 1.0).astype(np.float32)


def ramp(x, lo: float, hi: float) -> np.ndarray:
    """0 below ``lo``, 1 above ``hi``, linear in between (float32)."""
    return np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32)


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union of two signed distances (blend radius ``k``)."""
    h = np.clip(np.float32(k) - np.abs(a - b), 0.0, None) / np.float32(k)
    return np.minimum(a, b) - h * h * np.float32(k / 4)


def ellipse(u, v, cu: float, cv: float, a: float, b: float, tilt_deg: float = 0.0) -> np.ndarray:
    """Approximate signed distance to an ellipse with half axes ``a``, ``b`` rotated by ``tilt_deg``."""
    du, dv = u - np.float32(cu), v - np.float32(cv)
    if tilt_deg:
        c, s = np.float32(math.cos(math.radians(tilt_deg))), np.float32(math.sin(math.radians(tilt_deg)))
        du, dv = du * c + dv * s, -du * s + dv * c
    return (np.sqrt((du / np.float32(a)) ** 2 + (dv / np.float32(b)) ** 2) - 1.0) * np.float32(min(a, b))


def capsule(u, v, p: Tuple[float, float], q: Tuple[float, float], r: float) -> np.ndarray:
    """Signed distance to the segment ``p``-``q`` thickened by ``r``."""
    pu, pv = u - np.float32(p[0]), v - np.float32(p[1])
    du, dv = np.float32(q[0] - p[0]), np.float32(q[1] - p[1])
    t = np.clip((pu * du + pv * dv) / (du * du + dv * dv), 0.0, 1.0)
    return np.sqrt((pu - t * du) ** 2 + (pv - t * dv) ** 2) - np.float32(r)


def sigmoid_profile(v, low: float, high: float, mid: float, width: float) -> np.ndarray:
    """Smooth step from ``high`` (``v << mid``) to ``low`` (``v >> mid``)."""
    return np.float32(low) + np.float32(high - low) / (np.float32(1) + exp32((v - np.float32(mid)) / np.float32(width)))


def ap_factor(z: float, centre: float, half: float) -> float:
    """Cross-section factor of an ellipsoid along the slice direction: 1 at ``centre``, 0 beyond ``half``."""
    t = (z - centre) / half
    return math.sqrt(max(0.0, 1.0 - t * t))


def smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], sigma_px: Tuple[float, float]) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation lengths ``sigma_px`` (rows, cols).

    The field is filtered on a coarser grid (step about half the correlation length) and interpolated up.
    """
    steps = tuple(max(1, int(s // 2)) for s in sigma_px)
    small = (shape[0] // steps[0] + 3, shape[1] // steps[1] + 3)
    field = ndimage.gaussian_filter(rng.standard_normal(small, dtype=np.float32),
                                    (sigma_px[0] / steps[0], sigma_px[1] / steps[1]), mode="wrap", truncate=3.0)
    if steps != (1, 1):
        field = ndimage.zoom(field, steps, order=1)
    field = field[: shape[0], : shape[1]]
    field = field.astype(np.float64)
    return ((field - field.mean()) / (field.std() + 1e-8)).astype(np.float32)


class Canvas:
    """Image grid with a posed local frame ``u`` (across) / ``v`` (up) and a windowed anti-aliased painter.

    Args:
        x: ``[1, W]`` column coordinates in mm.
        y: ``[H, 1]`` row coordinates in mm (decreasing down the rows).
        pixel_mm: grid pixel size.
        shift: object centre ``(x, y)`` in mm.
        angle: in-plane rotation (rad).
        scale: object scale factor (local mm = grid mm / scale).
        mirror: +1 or -1 (flip ``u``).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, pixel_mm: float, shift=(0.0, 0.0), angle: float = 0.0,
                 scale: float = 1.0, mirror: int = 1):
        self.x1, self.y1 = x.reshape(-1).astype(np.float32), y.reshape(-1).astype(np.float32)
        self.shift, self.scale, self.mirror = (float(shift[0]), float(shift[1])), float(scale), int(mirror)
        self.ca, self.sa = math.cos(angle), math.sin(angle)
        xs, ys = x.astype(np.float32) - np.float32(shift[0]), y.astype(np.float32) - np.float32(shift[1])
        ca, sa, s = np.float32(self.ca), np.float32(self.sa), np.float32(scale)
        self.u = ((xs * ca + ys * sa) * np.float32(mirror) / s).astype(np.float32)
        self.v = ((-xs * sa + ys * ca) / s).astype(np.float32)
        self.shape = (self.y1.size, self.x1.size)
        self.w = float(pixel_mm) / float(scale)  # anti-aliasing width in local mm
        self.img = np.zeros(self.shape, np.float32)

    def window(self, box: Optional[Box]) -> Tuple[slice, slice]:
        """Grid rows/columns covering the local rectangle ``box`` (the whole grid for ``None``)."""
        if box is None:
            return slice(None), slice(None)
        u0, u1, v0, v1 = box
        us = np.array([u0, u1, u0, u1]) * self.mirror
        vs = np.array([v0, v0, v1, v1])
        xs = self.scale * (us * self.ca - vs * self.sa) + self.shift[0]
        ys = self.scale * (us * self.sa + vs * self.ca) + self.shift[1]
        pad = 2 * self.w * self.scale
        c0 = int(np.searchsorted(self.x1, xs.min() - pad))
        c1 = int(np.searchsorted(self.x1, xs.max() + pad, side="right"))
        r0 = int(np.searchsorted(-self.y1, -(ys.max() + pad)))
        r1 = int(np.searchsorted(-self.y1, -(ys.min() - pad), side="right"))
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def local(self, box: Optional[Box]):
        """``(window, u, v)`` with ``u``/``v`` broadcast to the window's full 2D shape."""
        win = self.window(box)
        return win, self.u[win], self.v[win]

    def paint(self, dist: Callable[[np.ndarray, np.ndarray], np.ndarray], value: Field,
              box: Optional[Box] = None, weight: Optional[Field] = None) -> None:
        """Blend ``value`` over the image where ``dist(u, v) < 0`` (anti-aliased), inside ``box`` only.

        ``value``/``weight`` may be scalars, full-grid arrays or functions of ``(u, v)`` on the window.
        """
        win, u, v = self.local(box)
        if u.size == 0:
            return
        alpha = inside(dist(u, v), self.w)
        if weight is not None:
            alpha = alpha * self._field(weight, win, u, v)
        sub = self.img[win]
        sub += alpha * (self._field(value, win, u, v) - sub)

    def blend(self, win, alpha: np.ndarray, value) -> None:
        """Blend ``value`` (scalar or array of the window's shape) with a precomputed ``alpha`` over ``win``."""
        sub = self.img[win]
        sub += alpha * (value - sub)

    @staticmethod
    def _field(f: Field, win, u, v):
        if callable(f):
            return f(u, v)
        if isinstance(f, np.ndarray) and f.ndim == 2:
            return f[win]
        return np.float32(f)
