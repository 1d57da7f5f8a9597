"""MRAugment (Fabian et al., ICML 2021): physics-aware augmentation of fully sampled multicoil k-space + p schedule.

Per slice: ``ifft2c`` -> ONE random transform applied identically to every coil and to real/imag parts
(fliph -> flipv -> rot90 -> integer translation -> one bilinear affine of rotation/shear/scale, optionally on an
upsampled grid) -> ``target = center_crop(rss_complex(images), min(H, h) x min(W, w))`` -> ``fft2c``. Each transform
fires when a uniform draw ``< weight * p``. The k-space keeps its shape ``(H, W)``, so the data transform can apply
the sampling mask afterwards with the file's ``padding_left/right``; ``max_value`` stays the volume's (not ours).
Geometric conventions (axes, signs, padding, rot90 on non-square images): :mod:`varnet_ds.data.augment_ops`.

Preview grid: ``python -m varnet_ds.sim.augment_preview``; timing: ``python -m varnet_ds.bench --augment``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence, Tuple

import fastmri
import torch
from fastmri.data.transforms import center_crop

from varnet_ds.config import AUG_SCHEDULES, AUG_WEIGHT_NAMES, AugConfig
from varnet_ds.data.augment_ops import AugParams, transform_image

__all__ = ["AugmentSchedule", "MRAugment"]

_NUM_DRAWS = 16  # 7 fire draws + k, t_x, t_y, rotation, shear_x, shear_y, scale_x, scale_y, spare


class AugmentSchedule:
    """Augmentation strength ``p`` per epoch (0-based, may be fractional), MRAugment's ``schedule_p``.

    ``t < delay`` gives 0; afterwards ``constant``: ``p_max``; ``ramp``: ``(t-D)/(T-D) p_max``; ``exp``:
    ``p_max (1 - e^{-k(t-D)/(T-D)}) / (1 - e^{-k})``. ``t`` is clamped to ``T``, so ``p <= p_max`` always.

    Args:
        kind: ``constant`` | ``ramp`` | ``exp``.
        p_max: final strength in ``[0, 1]``.
        delay: epochs ``D >= 0`` with ``p = 0``; must be ``< total_epochs``.
        total_epochs: ``T``, the epoch at which ``p_max`` is reached.
        exp_decay: ``k > 0`` of the ``exp`` schedule (large: step, small: ramp).
    """

    def __init__(self, kind: str, p_max: float, delay: int, total_epochs: int, exp_decay: float = 5.0):
        if kind not in AUG_SCHEDULES:
            raise ValueError(f"aug.schedule = {kind!r}: must be one of {list(AUG_SCHEDULES)}")
        if not (isinstance(p_max, numbers.Real) and 0.0 <= p_max <= 1.0):
            raise ValueError(f"aug.p_max = {p_max!r}: must be a number in [0, 1]")
        if isinstance(delay, bool) or not isinstance(delay, numbers.Integral) or delay < 0:
            raise ValueError(f"aug.delay = {delay!r}: must be an integer >= 0")
        if isinstance(total_epochs, bool) or not isinstance(total_epochs, numbers.Integral) or total_epochs < 1:
            raise ValueError(f"total_epochs = {total_epochs!r}: must be an integer >= 1")
        if delay >= total_epochs:
            raise ValueError(f"aug.delay = {delay} must be < total_epochs = {total_epochs}")
        if not (isinstance(exp_decay, numbers.Real) and math.isfinite(exp_decay) and exp_decay > 0):
            raise ValueError(f"aug.exp_decay = {exp_decay!r}: must be a finite number > 0")
        self.kind, self.p_max, self.delay = kind, float(p_max), int(delay)
        self.total_epochs, self.exp_decay = int(total_epochs), float(exp_decay)

    @classmethod
    def from_config(cls, aug_cfg: Any, total_epochs: int) -> AugmentSchedule:
        """Schedule from an ``AugConfig`` (dataclass or DictConfig); ``enabled: false`` gives ``p = 0`` always."""
        if not aug_cfg.enabled:
            return cls("constant", 0.0, 0, max(int(total_epochs), 1))
        return cls(str(aug_cfg.schedule), float(aug_cfg.p_max), int(aug_cfg.delay), int(total_epochs),
                   float(aug_cfg.exp_decay))

    @property
    def enabled(self) -> bool:
        return self.p_max > 0.0

    def __call__(self, epoch: float) -> float:
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Real) or not epoch >= 0:
            raise ValueError(f"epoch = {epoch!r}: must be a number >= 0")
        if epoch < self.delay or self.p_max == 0.0:
            return 0.0
        frac = (min(float(epoch), self.total_epochs) - self.delay) / (self.total_epochs - self.delay)
        if self.kind == "constant":
            return self.p_max
        if self.kind == "ramp":
            return frac * self.p_max
        k = self.exp_decay
        return self.p_max * (-math.expm1(-k * frac)) / (-math.expm1(-k))

    def __repr__(self) -> str:
        return (f"AugmentSchedule(kind={self.kind!r}, p_max={self.p_max}, delay={self.delay}, "
                f"total_epochs={self.total_epochs}, exp_decay={self.exp_decay})")


def _check_aug_config(cfg: Any) -> None:
    limits = dict(max_translation_x=math.inf, max_translation_y=math.inf, max_rotation=math.inf,
                  max_shearing_x=90.0, max_shearing_y=90.0, max_scaling=1.0)
    for key, upper in limits.items():
        value = getattr(cfg, key)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value < upper):
            raise ValueError(f"aug.{key} = {value!r}: must be a finite number in [0, {upper})")
    for name in AUG_WEIGHT_NAMES:
        value = getattr(cfg.weights, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"aug.weights.{name} = {value!r}: must be a finite number >= 0")
    if isinstance(cfg.upsample_factor, bool) or not isinstance(cfg.upsample_factor, int) or cfg.upsample_factor < 1:
        raise ValueError(f"aug.upsample_factor = {cfg.upsample_factor!r}: must be an integer >= 1")


def _check_generator(generator: Any, device: Optional[torch.device] = None) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if device is not None and generator is not None and generator.device.type not in ("cpu", device.type):
        raise ValueError(f"generator on {generator.device} but kspace on {device}: "
                         "use a CPU generator or one on the k-space's device")


def _check_target_size(target_size: Sequence[int]) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in target_size)
    except (TypeError, ValueError):
        raise ValueError(f"target_size = {target_size!r}: must be two positive integers (h, w)") from None
    if h < 1 or w < 1:
        raise ValueError(f"target_size = {tuple(target_size)}: must be two positive integers (h, w)")
    return h, w


def _as_complex(kspace: Any) -> Tuple[torch.Tensor, bool]:
    """Complex view of ``kspace`` and whether it came as the real ``[..., 2]`` view."""
    if not isinstance(kspace, torch.Tensor):
        raise TypeError("kspace must be a torch.Tensor [coils, H, W] (complex) or [coils, H, W, 2] (real view), "
                        f"got {type(kspace).__name__}")
    if kspace.is_complex() and kspace.ndim == 3:
        out, real_view = kspace, False
    elif kspace.is_floating_point() and kspace.ndim == 4 and kspace.shape[-1] == 2:
        out, real_view = torch.view_as_complex(kspace.contiguous()), True
    else:
        raise ValueError("kspace must be complex [coils, H, W] or real [coils, H, W, 2]; "
                         f"got shape {tuple(kspace.shape)} dtype {kspace.dtype}")
    if out.shape[-2] < 2 or out.shape[-1] < 2:
        raise ValueError(f"kspace spatial size must be at least 2x2, got {tuple(out.shape[-2:])}")
    return out, real_view


def _check_p(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"augmentation strength p = {p!r}: must be a number in [0, 1]")
    return float(p)


class MRAugment:
    """MRAugment pipeline on fully sampled multicoil k-space.

    Args:
        cfg: ``AugConfig`` (dataclass or DictConfig node); ``None`` = the method's defaults
            (``varnet_ds.config.AugConfig()``). An optional ``anisotropic_scaling`` attribute (default False, as
            MRAugment's code) draws ``scale_x`` and ``scale_y`` independently instead of one isotropic scale.

    Attributes:
        last_params: the :class:`AugParams` of the last :meth:`augment` call.
    """

    def __init__(self, cfg: Optional[Any] = None):
        cfg = AugConfig() if cfg is None else cfg
        _check_aug_config(cfg)
        self.cfg = cfg
        self.weights = {name: float(getattr(cfg.weights, name)) for name in AUG_WEIGHT_NAMES}
        self.upsample_factor = int(cfg.upsample_factor) if cfg.upsample else 1
        self.anisotropic_scaling = bool(getattr(cfg, "anisotropic_scaling", False))
        self.last_params: Optional[AugParams] = None

    def sample_params(self, p: float, generator: Optional[torch.Generator], shape: Tuple[int, int]) -> AugParams:
        """Draw one slice's transform (16 uniforms per call, so the random stream is layout-stable).

        Args:
            p: strength in ``[0, 1]``; transform ``n`` fires when ``u_n < weight_n * p``.
            generator: ``torch.Generator`` (any device; draws are brought to CPU) or None = torch's global RNG
                (seeded per DataLoader worker by torch; seed it per rank too under DDP).
            shape: image ``(H, W)``, converts the translation fractions to pixels (``int()`` truncation).
        """
        p = _check_p(p)
        h, w = (int(v) for v in shape)
        _check_generator(generator)
        device = generator.device if generator is not None else "cpu"
        u = torch.rand(_NUM_DRAWS, generator=generator, dtype=torch.float64, device=device).tolist()
        fire = {name: u[i] < self.weights[name] * p for i, name in enumerate(AUG_WEIGHT_NAMES)}
        cfg = self.cfg

        def sym(x: float, limit: float) -> float:  # U(-limit, limit) from U(0, 1)
            return (2.0 * x - 1.0) * float(limit)

        scale_x = 1.0 + sym(u[13], cfg.max_scaling)
        scale_y = 1.0 + sym(u[14], cfg.max_scaling) if self.anisotropic_scaling else scale_x
        return AugParams(
            p=p,
            fliph=fire["fliph"],
            flipv=fire["flipv"],
            rot90=min(1 + int(3 * u[7]), 3) if fire["rot90"] else 0,
            translation=(int(sym(u[8], cfg.max_translation_x) * h), int(sym(u[9], cfg.max_translation_y) * w))
            if fire["translation"] else None,
            rotation=sym(u[10], cfg.max_rotation) if fire["rotation"] else None,
            shearing=(sym(u[11], cfg.max_shearing_x), sym(u[12], cfg.max_shearing_y)) if fire["shearing"] else None,
            scaling=(scale_x, scale_y) if fire["scaling"] else None,
        )

    def transform_images(self, images: torch.Tensor, params: AugParams) -> torch.Tensor:
        """Apply ``params`` to complex coil images ``[..., H, W]`` (same transform for every leading index)."""
        real = torch.view_as_real(images).movedim(-1, 0)  # [2, ..., H, W]
        out = transform_image(real, params, self.upsample_factor)
        return torch.view_as_complex(out.movedim(0, -1).contiguous())

    def apply(self, kspace: torch.Tensor, params: AugParams, target_size: Sequence[int]) -> Tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
        """Augment one slice with given parameters.

        Args:
            kspace: fully sampled ``[coils, H, W]`` complex, or fastMRI's real view ``[coils, H, W, 2]``.
            params: from :meth:`sample_params`; an identity draw returns ``kspace`` itself.
            target_size: ``(h, w)`` of the training target (e.g. 320x320).

        Returns:
            ``(kspace_aug, target)``: k-space in the input's format and shape; float32 target
            ``[min(H, h), min(W, w)] = center_crop(rss_complex(ifft2c(kspace_aug)))``.
        """
        kc, real_view = _as_complex(kspace)
        size = _check_target_size(target_size)
        images = torch.view_as_complex(fastmri.ifft2c(torch.view_as_real(kc)))
        if params.is_identity:
            return kspace, self._target(images, size)
        images = self.transform_images(images, params)
        kspace_aug = fastmri.fft2c(torch.view_as_real(images))
        return (kspace_aug if real_view else torch.view_as_complex(kspace_aug)), self._target(images, size)

    def augment(self, kspace: torch.Tensor, target_size: Sequence[int], p: float,
                generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Draw and apply one transform (see :meth:`apply`); ``p == 0`` returns ``kspace`` unchanged."""
        kc, _ = _as_complex(kspace)
        _check_generator(generator, kc.device)
        params = self.sample_params(p, generator, kc.shape[-2:])
        self.last_params = params
        return self.apply(kspace, params, target_size)

    @staticmethod
    def _target(images: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        rss = fastmri.rss_complex(torch.view_as_real(images), dim=-3)
        cropped = (min(rss.shape[-2], size[0]), min(rss.shape[-1], size[1]))
        return center_crop(rss, cropped).to(torch.float32)
