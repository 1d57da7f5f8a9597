"""Consolidated VarNet weights: read ``model_fp32.pt`` payloads, plain fastMRI state_dicts and ``zero_to_fp32.py``
outputs, check them against model sizes, and build the model.

Used by ``varnet_ds.evaluate`` and by training's ``train.init_weights``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from varnet_ds.config import FASTMRI_SIZES, SIZE_KEYS, load_config
from varnet_ds.model.varnet import VarNetDS, build_model
from varnet_ds.system import resolve_device

PathLike = Union[str, Path]
WEIGHTS_FILE = "model_fp32.pt"
ZERO_TO_FP32_FILE = "pytorch_model.bin"  # what DeepSpeed's zero_to_fp32.py writes into its output folder


def _missing_weights_message(run_dir: Path) -> str:
    ckpt = run_dir / "checkpoints"
    latest = ckpt / "latest"
    tag = latest.read_text().strip() if latest.is_file() else "TAG"
    return (f"{run_dir / WEIGHTS_FILE} not found: training writes it at the end; for an unfinished run use "
            f"{ckpt}/{tag} with zero_to_fp32: `python {ckpt / 'zero_to_fp32.py'} {ckpt} OUT_DIR -t {tag}`, then "
            f"--checkpoint OUT_DIR/{ZERO_TO_FP32_FILE} with the run's model sizes (--num-cascades ...)")


def _strip_prefixes(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drop a ``module.`` (DDP/DeepSpeed) or ``varnet.`` (fastMRI VarNetModule) prefix shared by every key."""
    for prefix in ("module.", "varnet."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_weights(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a ``model_fp32.pt`` payload or a plain VarNet state_dict file (CPU tensors).

    Returns:
        ``(state_dict, info)`` where ``info`` has the payload's ``model`` sizes (``{}`` for a plain state_dict),
        ``global_step`` and ``epoch`` when present.

    Raises:
        FileNotFoundError: the file does not exist. ValueError: not a torch file or not a state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only errors all mean "not our format"
        raise ValueError(f"{path}: cannot load as model_fp32.pt or state_dict ({type(err).__name__}: {err})") from None
    info: Dict[str, Any] = {}
    if isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping):
        model_info = payload.get("model") or {}
        info = {"model": {k: int(model_info[k]) for k in SIZE_KEYS if k in model_info}}
        info.update({k: payload[k] for k in ("global_step", "epoch") if k in payload})
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping) or not payload or not all(torch.is_tensor(v) for v in payload.values()):
        raise ValueError(f"{path}: neither a model_fp32.pt payload ({{'state_dict': ...}}) nor a state_dict of tensors")
    return _strip_prefixes(dict(payload)), info


def check_state_dict(state: Mapping[str, torch.Tensor], model: torch.nn.Module, source: PathLike) -> None:
    """Raise a ValueError naming the first missing, unexpected and mis-shaped keys when ``state`` does not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    parts = [f"{name} {items[:4]}" for name, items in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
    raise ValueError(
        f"{source} does not match a VarNet with {model_sizes(model)}: {'; '.join(parts)}. The file looks like "
        f"{infer_sizes(state)}: pass the sizes it was trained with (--num-cascades/--chans/--pools/--sens-chans/"
        "--sens-pools)"
    )


def _unet_sizes(state: Mapping[str, torch.Tensor], prefix: str) -> Tuple[Optional[int], int]:
    first = state.get(f"{prefix}.down_sample_layers.0.layers.0.weight")
    layers = f"{prefix}.down_sample_layers."
    pools = len({k[len(layers):].split(".")[0] for k in state if k.startswith(layers)})  # = num_pool_layers
    return (None if first is None else int(first.shape[0])), pools


def infer_sizes(state: Mapping[str, torch.Tensor]) -> Dict[str, Optional[int]]:
    """VarNet sizes read off a state_dict's keys and shapes (for error messages; None where not found)."""
    chans, pools = _unet_sizes(state, "cascades.0.model.unet")
    sens_chans, sens_pools = _unet_sizes(state, "sens_net.norm_unet.unet")
    num_cascades = len({k.split(".")[1] for k in state if k.startswith("cascades.")})
    return {"num_cascades": num_cascades, "chans": chans, "pools": pools, "sens_chans": sens_chans,
            "sens_pools": sens_pools}


def model_sizes(model: VarNetDS) -> Dict[str, int]:
    """The five VarNet size parameters of a built model."""
    unet, sens_unet = model.cascades[0].model.unet, model.sens_net.norm_unet.unet
    return {"num_cascades": len(model.cascades), "chans": unet.chans, "pools": unet.num_pool_layers,
            "sens_chans": sens_unet.chans, "sens_pools": sens_unet.num_pool_layers}


def load_model(
    run_or_checkpoint: PathLike,
    precision: str = "fp32",
    sizes: Optional[Mapping[str, Optional[int]]] = None,
    device: Union[str, torch.device] = "cpu",
) -> VarNetDS:
    """Build a :class:`VarNetDS` and load consolidated fp32 weights into it (eval mode, on ``device``).

    Args:
        run_or_checkpoint: A run folder (``RUN/model_fp32.pt`` is loaded), an output folder of DeepSpeed's
            ``zero_to_fp32.py`` (``pytorch_model.bin``) or a file: a ``model_fp32.pt`` payload or a plain fastMRI
            VarNet state_dict.
        precision: ``fp32`` | ``bf16`` (bf16 U-Nets, fp32 FFTs).
        sizes: Model sizes (``num_cascades, chans, pools, sens_chans, sens_pools``); ``None`` values and
            missing keys come from the payload's ``model`` entry, then the run's ``config.yaml``, then fastMRI's
            defaults.
        device: Where the model goes.

    Returns:
        The model, with ``source_checkpoint`` (the weights file, str) and ``checkpoint_step`` (the payload's
        ``global_step`` or None) set.

    Raises:
        FileNotFoundError: missing run folder, ``model_fp32.pt`` or file. ValueError: unreadable file or weights
        that do not match the sizes (names the keys).
    """
    path = Path(run_or_checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run folder or checkpoint file")
    run_dir = path if path.is_dir() else None
    if run_dir is not None:
        path = run_dir / WEIGHTS_FILE
        if not path.is_file() and (run_dir / ZERO_TO_FP32_FILE).is_file():
            path = run_dir / ZERO_TO_FP32_FILE  # an output folder of zero_to_fp32.py
        if not path.is_file():
            raise FileNotFoundError(_missing_weights_message(run_dir))
    state, info = read_weights(path)
    resolved = dict(FASTMRI_SIZES)
    if run_dir is not None and not info.get("model") and (run_dir / "config.yaml").is_file():
        resolved.update({k: int(getattr(load_config(run_dir / "config.yaml").model, k)) for k in SIZE_KEYS})
    resolved.update(info.get("model", {}))
    resolved.update({k: int(v) for k, v in (sizes or {}).items() if v is not None})
    unknown = sorted(set(resolved) - set(SIZE_KEYS))
    if unknown:
        raise ValueError(f"unknown model size keys {unknown}; expected {list(SIZE_KEYS)}")
    model = build_model(resolved, precision, checkpointing="none")
    check_state_dict(state, model, path)
    model.load_state_dict(state, strict=True)
    model.source_checkpoint = str(path)
    model.checkpoint_step = info.get("global_step")
    return model.to(resolve_device(device)).eval()


def load_init_weights(model: torch.nn.Module, path: str) -> None:
    """``train.init_weights``: load a ``model_fp32.pt`` (ours), a ``zero_to_fp32.py`` output or a plain VarNet
    state_dict into ``model`` (strict; a size mismatch names the key)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"train.init_weights = {path}: file not found")
    state, _ = read_weights(path)
    check_state_dict(state, model, f"train.init_weights = {path}")
    model.load_state_dict(state, strict=True)
