"""One fastMRI multicoil HDF5 file: its keys, the checks that decide whether it is usable, and folder listing.

Each file is opened once; only the header, shapes, dtypes and attributes are read, plus a finite-value scan of
the k-space one slice at a time (memory is bounded by one slice). :class:`DataError` names the file and the problem.
"""

from __future__ import annotations

import xml.etree.ElementTree as etree
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np
from fastmri.data.mri_data import et_query

PathLike = Union[str, Path]

KSPACE_KEY = "kspace"
HEADER_KEY = "ismrmrd_header"
TARGET_KEY = "reconstruction_rss"
SINGLECOIL_TARGET_KEY = "reconstruction_esc"
COMPLEX_DTYPES = (np.complex64, np.complex128)


class DataError(ValueError):
    """A problem with a data file or folder; ``str(err)`` is ``"{path}: {problem}"``."""

    def __init__(self, path: PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # keep the two-argument constructor picklable (DataLoader workers re-raise)
        return (type(self), (self.path, self.problem))


@dataclass
class VolumeInfo:
    """Summary of one valid multicoil volume.

    Attributes:
        path: The HDF5 file.
        acquisition: ``acquisition`` attribute (e.g. ``CORPD_FBK``, ``AXT2``) or ``None``.
        num_slices: Number of slices (k-space dim 0).
        num_coils: Number of coils (k-space dim 1).
        shape: K-space matrix ``(H, W)`` (readout, phase encode).
        recon_size: ``reconSpace`` matrix ``(x, y)`` from the header.
        padding: ``(padding_left, padding_right)`` acquired phase-encode columns, as fastMRI computes them.
        max_value: ``max`` attribute (volume max of the target, SSIM ``data_range``) or ``None``.
        patient_id: ``patient_id`` attribute or ``None``.
        warnings: Non-fatal remarks (e.g. reconstruction width larger than the k-space width).
    """

    path: Path
    acquisition: Optional[str]
    num_slices: int
    num_coils: int
    shape: Tuple[int, int]
    recon_size: Tuple[int, int]
    padding: Tuple[int, int]
    max_value: Optional[float]
    patient_id: Optional[str]
    warnings: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _header_int(path: Path, root: etree.Element, keys: Sequence[str]) -> int:
    """One integer from the ISMRMRD header, or a DataError naming the element."""
    name = "/".join(keys)
    try:
        text = et_query(root, keys)
    except RuntimeError:
        raise DataError(path, f"{HEADER_KEY} has no element {name}") from None
    try:
        return int(text)
    except ValueError:
        raise DataError(path, f"{HEADER_KEY} element {name} is not an integer: {text!r}") from None


def _attr_str(value) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _check_kspace_layout(path: Path, hf: h5py.File) -> h5py.Dataset:
    """Reject singlecoil, real-valued and wrongly ranked k-space; return the dataset."""
    keys = sorted(hf.keys())
    singlecoil_hint = "looks like singlecoil, varnet_ds needs multicoil"
    if KSPACE_KEY not in hf:
        raise DataError(path, f"missing dataset '{KSPACE_KEY}' (keys: {keys})")
    ks = hf[KSPACE_KEY]
    if not isinstance(ks, h5py.Dataset):
        raise DataError(path, f"'{KSPACE_KEY}' is a group, not a dataset")
    if SINGLECOIL_TARGET_KEY in hf and TARGET_KEY not in hf:
        raise DataError(path, f"has '{SINGLECOIL_TARGET_KEY}' and no '{TARGET_KEY}': {singlecoil_hint}")
    shape = tuple(ks.shape)
    if ks.dtype.type not in COMPLEX_DTYPES:
        if ks.dtype.kind in "fiu" and len(shape) >= 1 and shape[-1] == 2:
            raise DataError(
                path,
                f"'{KSPACE_KEY}' is real {ks.dtype} with shape {shape} (a [..., 2] real/imag layout); "
                "varnet_ds needs complex multicoil k-space [slices, coils, H, W]",
            )
        raise DataError(path, f"'{KSPACE_KEY}' has dtype {ks.dtype}; expected complex64 or complex128")
    if len(shape) == 3:
        raise DataError(path, f"'{KSPACE_KEY}' is 3-D {shape} [slices, H, W]: {singlecoil_hint}")
    if len(shape) != 4:
        raise DataError(path, f"'{KSPACE_KEY}' must be 4-D [slices, coils, H, W], got shape {shape}")
    if min(shape) == 0:
        raise DataError(path, f"'{KSPACE_KEY}' has an empty dimension: shape {shape}")
    return ks


def _parse_header(path: Path, hf: h5py.File) -> dict:
    """Encoded/recon matrix sizes and phase-encode limits from the ISMRMRD XML header."""
    if HEADER_KEY not in hf:
        raise DataError(path, f"missing dataset '{HEADER_KEY}' (keys: {sorted(hf.keys())})")
    raw = hf[HEADER_KEY][()]
    if isinstance(raw, np.ndarray) and raw.size == 1:
        raw = raw.reshape(-1)[0]
    if not isinstance(raw, (bytes, str)):
        raise DataError(path, f"'{HEADER_KEY}' is not a string (got {type(raw).__name__})")
    try:
        root = etree.fromstring(raw)
    except etree.ParseError as err:
        raise DataError(path, f"'{HEADER_KEY}' is not valid XML: {err}") from None
    enc = ["encoding", "encodedSpace", "matrixSize"]
    rec = ["encoding", "reconSpace", "matrixSize"]
    lims = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
    return {
        "enc": (_header_int(path, root, enc + ["x"]), _header_int(path, root, enc + ["y"])),
        "recon": (_header_int(path, root, rec + ["x"]), _header_int(path, root, rec + ["y"])),
        "center": _header_int(path, root, lims + ["center"]),
        "maximum": _header_int(path, root, lims + ["maximum"]),
    }


def _check_target(path: Path, hf: h5py.File, num_slices: int, recon: Tuple[int, int], warnings: List[str]):
    """Check ``reconstruction_rss`` rank, slice count and ``max``; return the target dataset."""
    target = hf[TARGET_KEY]
    if not isinstance(target, h5py.Dataset):
        raise DataError(path, f"'{TARGET_KEY}' is a group, not a dataset")
    if target.ndim != 3:
        raise DataError(path, f"'{TARGET_KEY}' must be 3-D [slices, h, w], got shape {tuple(target.shape)}")
    if target.shape[0] != num_slices:
        raise DataError(
            path, f"'{TARGET_KEY}' has {target.shape[0]} slices but '{KSPACE_KEY}' has {num_slices}"
        )
    if target.dtype.kind != "f":
        raise DataError(path, f"'{TARGET_KEY}' has dtype {target.dtype}; expected a real float array")
    if tuple(target.shape[1:]) != tuple(recon):
        warnings.append(f"'{TARGET_KEY}' is {target.shape[1]}x{target.shape[2]}, recon size {recon[0]}x{recon[1]}")
    return target


def _scan_finite(path: Path, ds: h5py.Dataset, name: str) -> None:
    """Read ``ds`` one slice at a time and fail on the first slice with NaN/inf (or an unreadable slice)."""
    for s in range(ds.shape[0]):
        try:
            arr = ds[s]
        except (OSError, RuntimeError, ValueError) as err:
            raise DataError(path, f"cannot read '{name}' slice {s} (corrupt file?): {err}") from None
        if not np.isfinite(arr).all():
            n_bad = int(arr.size - np.isfinite(arr).sum())
            raise DataError(path, f"'{name}' slice {s} contains {n_bad} NaN/inf values")


def check_file(path: PathLike, require_target: bool = True, scan_values: bool = True) -> VolumeInfo:
    """Validate one fastMRI multicoil HDF5 file.

    Args:
        path: The ``.h5`` file.
        require_target: Require ``reconstruction_rss`` and the ``max`` attribute (train/val folders).
        scan_values: Read the k-space (and target) slice by slice and reject NaN/inf values.

    Returns:
        The volume's :class:`VolumeInfo`.

    Raises:
        DataError: naming the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file does not exist")
    if not path.is_file():
        raise DataError(path, "not a regular file")
    if not h5py.is_hdf5(path):
        raise DataError(path, "not an HDF5 file")
    try:
        hf = h5py.File(path, "r")
    except OSError as err:
        raise DataError(path, f"cannot open HDF5 file (truncated or corrupt?): {err}") from None
    warnings: List[str] = []
    with hf:
        try:
            ks = _check_kspace_layout(path, hf)
            hdr = _parse_header(path, hf)
            attrs = dict(hf.attrs)
        except (OSError, KeyError, RuntimeError) as err:  # h5py errors on damaged metadata
            raise DataError(path, f"cannot read file structure (corrupt file?): {err}") from None
        num_slices, num_coils, height, width = (int(n) for n in ks.shape)
        (enc_x, enc_y), recon = hdr["enc"], hdr["recon"]
        if (enc_x, enc_y) != (height, width):
            raise DataError(
                path,
                f"header encodedSpace matrixSize {enc_x}x{enc_y} does not match '{KSPACE_KEY}' H x W "
                f"{height}x{width}",
            )
        padding_left = enc_y // 2 - hdr["center"]
        padding_right = padding_left + hdr["maximum"] + 1
        if not 0 <= padding_left < padding_right <= width:
            raise DataError(
                path,
                f"header padding [{padding_left}, {padding_right}) (from kspace_encoding_step_1 center "
                f"{hdr['center']}, maximum {hdr['maximum']}) is outside [0, {width}]",
            )
        if min(recon) <= 0:
            raise DataError(path, f"header reconSpace matrixSize {recon[0]}x{recon[1]} is not positive")
        if recon[0] > height:
            raise DataError(
                path, f"header recon size {recon[0]}x{recon[1]} is larger than k-space {height}x{width}"
            )
        if recon[1] > width:  # real fastMRI brain AXFLAIR files (fastMRI's "FLAIR 203" square-crop case)
            warnings.append(f"recon width {recon[1]} > k-space width {width}; evaluation crops a square")

        target = None
        if TARGET_KEY in hf:
            target = _check_target(path, hf, num_slices, recon, warnings)
        elif require_target:
            raise DataError(path, f"missing dataset '{TARGET_KEY}' (required for train/val folders)")

        max_value = attrs.get("max")
        if max_value is not None:
            try:
                max_value = float(np.asarray(max_value).reshape(-1)[0])
            except (TypeError, ValueError, IndexError):
                raise DataError(path, f"attribute 'max' is not a number: {attrs['max']!r}") from None
            if not np.isfinite(max_value) or max_value <= 0:
                raise DataError(path, f"attribute 'max' = {max_value} must be finite and > 0")
        elif require_target:
            raise DataError(path, "missing attribute 'max' (volume max of the target, needed as SSIM data_range)")

        if scan_values:
            _scan_finite(path, ks, KSPACE_KEY)
            if target is not None:
                _scan_finite(path, target, TARGET_KEY)

    return VolumeInfo(
        path=path,
        acquisition=_attr_str(attrs.get("acquisition")),
        num_slices=num_slices,
        num_coils=num_coils,
        shape=(height, width),
        recon_size=(int(recon[0]), int(recon[1])),
        padding=(int(padding_left), int(padding_right)),
        max_value=max_value,
        patient_id=_attr_str(attrs.get("patient_id")),
        warnings=warnings,
    )


def list_h5_files(folder: PathLike) -> List[Path]:
    """Sorted ``*.h5`` files of a folder; DataError when the folder is missing or has none."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(folder, "data folder does not exist")
    if not folder.is_dir():
        raise DataError(folder, "not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".h5" and p.is_file())
    if not files:
        others = sum(1 for _ in folder.iterdir())
        raise DataError(folder, f"no .h5 files in folder ({others} other entries)")
    return files
