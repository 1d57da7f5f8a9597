"""Pure-torch geometric kernels of the MRAugment pipeline, applied to real image stacks ``[..., H, W]``.

Conventions (all ops, all of :mod:`varnet_ds.data.augment`):

* Images are indexed ``[..., row, col]``; rows = ``H`` (dim -2, displayed top to bottom; the readout direction
  of fastMRI knee k-space), columns = ``W`` (dim -1, left to right; the phase-encode direction).
* The leading dims (real/imag x coils, batch) are treated as channels: every op transforms them identically.
* **Translation** follows MRAugment: ``translation_x`` is a fraction of ``H`` and moves along the rows,
  ``translation_y`` a fraction of ``W`` along the columns. :attr:`AugParams.translation` stores the integer
  shift ``(t_rows, t_cols)`` with ``out[i, j] = in[i - t_rows, j - t_cols]`` (content moves down/right).
* **Affine** geometry uses centred pixel coordinates ``x = col - (W - 1) / 2`` (right),
  ``y = row - (H - 1) / 2`` (down), i.e. pixel centres as in ``align_corners=False``. The forward map is
  ``q = A p`` with ``A = R(rotation) @ Sh_y(shear_y) @ Sh_x(shear_x) @ diag(scale_x, scale_y)``, where ``R`` turns
  counter-clockwise *as displayed* (``R(90)`` equals ``torch.rot90(k=1, dims=(-2, -1))``),
  ``Sh_x(a) = [[1, tan a], [0, 1]]`` and ``Sh_y(a) = [[1, 0], [tan a, 1]]``. Output pixels sample the input
  bilinearly at ``A^-1 q``.
* **Padding** is always ``reflect`` (mirror about the edge pixel centres, as ``np.pad(mode="reflect")``),
  continued periodically for shifts larger than the image, so no zeros ever enter. The affine is computed only on
  the output window; this equals "reflect-pad enough, warp, centre-crop back" because the bilinear interpolant of
  the reflected image is itself mirror-symmetric about every edge pixel centre (``grid_sample`` in
  ``padding_mode="reflection"`` with ``align_corners=True`` normalisation reflects about exactly those centres).
* **rot90** keeps the shape ``(H, W)``: for non-square images the rotated ``(W, H)`` image is centre-cropped /
  symmetrically reflect-padded back to ``(H, W)`` (MRAugment lets the shape change, which would break the file's
  phase-encode padding of the mask applied afterwards). Centres align exactly when ``H - W`` is even.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F


class AugParams(NamedTuple):
    """The random draw of one slice; ``None`` / ``0`` means the transform did not fire.

    Attributes:
        p: augmentation strength the draw was made with.
        fliph: flip the columns (``W``, dim -1).
        flipv: flip the rows (``H``, dim -2).
        rot90: number of counter-clockwise quarter turns (1..3), 0 = off.
        translation: integer shift ``(t_rows, t_cols)``; ``out[i, j] = in[i - t_rows, j - t_cols]``.
        rotation: angle in degrees, counter-clockwise as displayed.
        shearing: ``(shear_x, shear_y)`` in degrees.
        scaling: ``(scale_x, scale_y)``; ``> 1`` magnifies.
    """

    p: float
    fliph: bool = False
    flipv: bool = False
    rot90: int = 0
    translation: Optional[Tuple[int, int]] = None
    rotation: Optional[float] = None
    shearing: Optional[Tuple[float, float]] = None
    scaling: Optional[Tuple[float, float]] = None

    @property
    def fired(self) -> Tuple[str, ...]:
        """Names of the transforms that fired, in pipeline order."""
        flags = (
            ("fliph", self.fliph), ("flipv", self.flipv), ("rot90", self.rot90 != 0),
            ("translation", self.translation is not None), ("rotation", self.rotation is not None),
            ("shearing", self.shearing is not None), ("scaling", self.scaling is not None),
        )
        return tuple(name for name, on in flags if on)

    @property
    def interpolating(self) -> bool:
        """True when the bilinear affine (rotation / shearing / scaling) is applied."""
        return self.rotation is not None or self.shearing is not None or self.scaling is not None

    @property
    def is_identity(self) -> bool:
        """True when nothing fired (the k-space is then returned untouched)."""
        return not self.fired

    def describe(self) -> str:
        """Short human-readable summary, e.g. ``"H r90x1 t(3,-5) rot12 sh(4,-2) s(1.10,1.10)"``."""
        parts = []
        if self.fliph:
            parts.append("H")
        if self.flipv:
            parts.append("V")
        if self.rot90:
            parts.append(f"r90x{self.rot90}")
        if self.translation is not None:
            parts.append(f"t({self.translation[0]},{self.translation[1]})")
        if self.rotation is not None:
            parts.append(f"rot{self.rotation:.0f}")
        if self.shearing is not None:
            parts.append(f"sh({self.shearing[0]:.0f},{self.shearing[1]:.0f})")
        if self.scaling is not None:
            parts.append(f"s({self.scaling[0]:.2f},{self.scaling[1]:.2f})")
        return " ".join(parts) if parts else "none"


def reflect_indices(n: int, start: int, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Source indices of positions ``start .. start + size - 1`` in the infinite reflect extension of ``n``.

    Position ``-1`` maps to ``1``, ``n`` to ``n - 2`` (mirror about the edge pixel centres, period ``2n - 2``).

    Returns:
        int64 tensor of shape ``[size]`` with values in ``[0, n)``.
    """
    if n < 1 or size < 0:
        raise ValueError(f"reflect_indices: invalid n={n} or size={size}")
    idx = torch.arange(start, start + size, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - idx, idx)


def _take(x: torch.Tensor, dim: int, start: int, size: int) -> torch.Tensor:
    """Window ``[start, start + size)`` of ``x`` along ``dim`` with reflect extension."""
    n = x.shape[dim]
    if start >= 0 and start + size <= n:
        return x.narrow(dim, start, size)
    return x.index_select(dim, reflect_indices(n, start, size, x.device))


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Flip the columns (dim -1) of ``x`` ``[..., H, W]``."""
    return torch.flip(x, dims=(-1,))


def vflip(x: torch.Tensor) -> torch.Tensor:
    """Flip the rows (dim -2) of ``x`` ``[..., H, W]``."""
    return torch.flip(x, dims=(-2,))


def fit_to_shape(x: torch.Tensor, shape: Tuple[int, int]) -> torch.Tensor:
    """Centre-crop or symmetrically reflect-pad ``x`` ``[..., h, w]`` to ``[..., H, W]`` (crop start ``(h-H)//2``)."""
    for dim, target in ((-2, int(shape[0])), (-1, int(shape[1]))):
        n = x.shape[dim]
        if n != target:
            x = _take(x, dim, (n - target) // 2, target)
    return x


def rot90_keep_shape(x: torch.Tensor, k: int) -> torch.Tensor:
    """Rotate ``x`` ``[..., H, W]`` by ``k`` counter-clockwise quarter turns, keeping the shape ``(H, W)``."""
    h, w = x.shape[-2:]
    return fit_to_shape(torch.rot90(x, int(k) % 4, dims=(-2, -1)), (h, w))


def translate(x: torch.Tensor, shift: Tuple[int, int]) -> torch.Tensor:
    """Integer translation with reflect padding: ``out[..., i, j] = x[..., i - shift[0], j - shift[1]]``."""
    for dim, t in ((-2, int(shift[0])), (-1, int(shift[1]))):
        if t != 0:
            x = _take(x, dim, -t, x.shape[dim])
    return x


def affine_matrix(
    rotation: float = 0.0, shearing: Tuple[float, float] = (0.0, 0.0), scaling: Tuple[float, float] = (1.0, 1.0)
) -> torch.Tensor:
    """Forward 2x2 map ``A = R(rotation) @ Sh_y @ Sh_x @ diag(scaling)`` in ``(x=col, y=row-down)`` coordinates.

    Args:
        rotation: degrees, counter-clockwise as displayed.
        shearing: ``(shear_x, shear_y)`` degrees.
        scaling: ``(scale_x, scale_y)``; both must be > 0.

    Returns:
        float64 tensor ``[2, 2]``.
    """
    if scaling[0] <= 0 or scaling[1] <= 0:
        raise ValueError(f"affine scaling must be > 0, got {tuple(scaling)}")
    a = math.radians(rotation)
    c, s = math.cos(a), math.sin(a)
    rot = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)
    sh_x = torch.tensor([[1.0, math.tan(math.radians(shearing[0]))], [0.0, 1.0]], dtype=torch.float64)
    sh_y = torch.tensor([[1.0, 0.0], [math.tan(math.radians(shearing[1])), 1.0]], dtype=torch.float64)
    return rot @ sh_y @ sh_x @ torch.diag(torch.tensor(scaling, dtype=torch.float64))


def affine_warp(x: torch.Tensor, matrix: torch.Tensor, upsample_factor: int = 1) -> torch.Tensor:
    """Bilinear affine warp of real images about their centre, reflect padding, same output shape.

    Optionally works on a grid upsampled by ``upsample_factor`` (bilinear ``F.interpolate``) and downsamples
    afterwards, as MRAugment's ``aug_upsample``.

    Args:
        x: real tensor ``[..., H, W]`` (leading dims are channels; ``H, W >= 2``).
        matrix: forward map ``A`` ``[2, 2]`` (see :func:`affine_matrix`).
        upsample_factor: integer >= 1.

    Returns:
        Tensor ``[..., H, W]`` with the dtype and device of ``x``.
    """
    if x.is_complex():
        raise TypeError("affine_warp expects a real tensor (use a real/imag channel view)")
    if upsample_factor < 1:
        raise ValueError(f"upsample_factor must be >= 1, got {upsample_factor}")
    shape = x.shape
    h, w = shape[-2:]
    img = x.reshape(1, -1, h, w)
    if upsample_factor > 1:
        img = F.interpolate(img, size=(h * upsample_factor, w * upsample_factor), mode="bilinear",
                            align_corners=False)
    hs, ws = img.shape[-2:]
    if hs < 2 or ws < 2:
        raise ValueError(f"affine_warp needs images of at least 2x2 pixels, got {hs}x{ws}")
    inv = torch.linalg.inv(matrix.to(torch.float64).cpu())
    # output coords (affine_grid, align_corners=False: x_n * W/2 = centred pixel) -> input coords in the
    # align_corners=True normalisation, whose reflection mirrors about the edge pixel centres.
    out_scale = torch.diag(torch.tensor([ws / 2.0, hs / 2.0], dtype=torch.float64))
    in_scale = torch.diag(torch.tensor([2.0 / (ws - 1), 2.0 / (hs - 1)], dtype=torch.float64))
    theta = torch.zeros(1, 2, 3, dtype=torch.float64)
    theta[0, :, :2] = in_scale @ inv @ out_scale
    grid = F.affine_grid(theta.to(img.device), [1, 1, hs, ws], align_corners=False).to(img.dtype)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    if upsample_factor > 1:
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    return out.reshape(shape)


def transform_image(x: torch.Tensor, params: AugParams, upsample_factor: int = 1) -> torch.Tensor:
    """Apply the drawn transforms in MRAugment order: fliph, flipv, rot90, translation, one affine.

    Args:
        x: real tensor ``[..., H, W]`` (e.g. ``[2, coils, H, W]``: real/imag channel first).
        params: the draw.
        upsample_factor: grid refinement for the affine (1 = off).

    Returns:
        Tensor of the same shape as ``x``.
    """
    if params.fliph:
        x = hflip(x)
    if params.flipv:
        x = vflip(x)
    if params.rot90:
        x = rot90_keep_shape(x, params.rot90)
    if params.translation is not None:
        x = translate(x, params.translation)
    if params.interpolating:
        mat = affine_matrix(
            params.rotation if params.rotation is not None else 0.0,
            params.shearing if params.shearing is not None else (0.0, 0.0),
            params.scaling if params.scaling is not None else (1.0, 1.0),
        )
        x = affine_warp(x, mat, upsample_factor)
    return x
