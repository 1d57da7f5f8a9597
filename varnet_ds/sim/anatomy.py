"""The one brain anatomy source of the simulator: a pinned, hash-verified MNI152 template file.

The simulated brains are made from the ICBM 2009a nonlinear symmetric MNI152 T1 template (skull-stripped, 1 mm,
197x233x189) as nilearn ships it, ``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``.
Every machine uses this one file: :func:`fetch` takes it out of the pinned nilearn wheel (``pip download --no-deps
nilearn==0.14.1``; nilearn itself is not installed), checks its sha256 against :data:`SHA256` and stores it
atomically as ``<dir>/mni152_t1_2009a_sym.nii.gz``, where ``<dir>`` is ``$VARNET_DS_ANATOMY_DIR`` when set, else
``<sys.prefix>/share/varnet_ds`` (the virtual environment: ``make install`` runs the fetch). Nothing falls back: a
missing or different file raises :class:`AnatomySourceError` naming the file and the command that installs it.

Usage::

    python -m varnet_ds.sim.anatomy fetch                 # download the wheel (PyPI), extract, verify, store
    python -m varnet_ds.sim.anatomy fetch --from FILE     # offline: a nilearn-0.14.1 wheel or the .nii.gz itself
    python -m varnet_ds.sim.anatomy check                 # exit 0 when installed and verified, else 1 (says why)
    python -m varnet_ds.sim.anatomy path                  # where it is looked for
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Union

from varnet_ds.exits import entry_point
from varnet_ds.files import atomic_path

NAME = "MNI152 ICBM 2009a sym T1 (nilearn 0.14.1)"
SHA256 = "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6"
NILEARN = "nilearn==0.14.1"
WHEEL_MEMBER = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
FILENAME = "mni152_t1_2009a_sym.nii.gz"
ENV_DIR = "VARNET_DS_ANATOMY_DIR"
FETCH_COMMAND = "python -m varnet_ds.sim.anatomy fetch"
_CHUNK = 1 << 20


class AnatomySourceError(RuntimeError):
    """The anatomy file is missing or is not the pinned one (the message says what and how to install it)."""


def anatomy_dir() -> Path:
    """Folder of the anatomy file: ``$VARNET_DS_ANATOMY_DIR``, else ``<sys.prefix>/share/varnet_ds``."""
    env = os.environ.get(ENV_DIR)
    return Path(env).expanduser() if env else Path(sys.prefix) / "share" / "varnet_ds"


def template_path() -> Path:
    """Where the anatomy file is looked for (it may not exist)."""
    return anatomy_dir() / FILENAME


def sha256_file(path: Union[str, Path]) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    """:func:`sha256_file`, once per file version (path, size, modification time)."""
    return sha256_file(path)


def _install_hint() -> str:
    env = f"{ENV_DIR}={anatomy_dir()} " if os.environ.get(ENV_DIR) else ""
    return f"install it with `{env}{FETCH_COMMAND}` (make install runs it; docs/demo_data.md)"


def require() -> Path:
    """Path of the verified anatomy file.

    Raises:
        AnatomySourceError: the file is missing, unreadable or its sha256 is not :data:`SHA256`; the message names
            the file and the command that installs it.
    """
    path = template_path()
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is None or not path.is_file():
        raise AnatomySourceError(f"brain anatomy source missing: {path} ({NAME}, sha256 {SHA256[:12]}…) does not "
                                 f"exist; {_install_hint()}")
    try:
        digest = _sha256_cached(str(path), st.st_size, st.st_mtime_ns)
    except OSError as err:
        raise AnatomySourceError(f"brain anatomy source unreadable: {path}: {err}; {_install_hint()}") from None
    if digest != SHA256:
        raise AnatomySourceError(f"brain anatomy source differs: {path} has sha256 {digest}, expected {SHA256} "
                                 f"({NAME}); reinstall it with `{FETCH_COMMAND}`")
    return path


def _extract(source: Path, tmp_dir: Path) -> Path:
    """The template file from ``source``: a nilearn wheel (zip) or the ``.nii.gz`` itself."""
    if not zipfile.is_zipfile(source):
        return source
    with zipfile.ZipFile(source) as zf:
        if WHEEL_MEMBER not in zf.namelist():
            raise AnatomySourceError(f"{source}: no {WHEEL_MEMBER} in this wheel (expected a {NILEARN} wheel)")
        out = tmp_dir / FILENAME
        with zf.open(WHEEL_MEMBER) as src, open(out, "wb") as dst:
            for block in iter(lambda: src.read(_CHUNK), b""):
                dst.write(block)
    return out


def _download_wheel(tmp_dir: Path) -> Path:
    """``pip download --no-deps NILEARN`` (a wheel, nothing installed) into ``tmp_dir``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--dest", str(tmp_dir), NILEARN]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(tmp_dir.glob("nilearn-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise AnatomySourceError(f"`{' '.join(cmd[2:])}` failed (exit {proc.returncode}): "
                                 f"{(proc.stderr or proc.stdout).strip()[-800:]}\nWithout access to a package index, "
                                 f"download {NILEARN}'s wheel elsewhere and run `{FETCH_COMMAND} --from WHEEL`")
    return wheels[0]


def fetch(source: Optional[Union[str, Path]] = None) -> Path:
    """Install the anatomy file into :func:`template_path` (a verified file already there is kept).

    Args:
        source: a local nilearn 0.14.1 wheel or the template ``.nii.gz``; ``None`` downloads the wheel with pip.

    Returns:
        The installed, verified path.

    Raises:
        AnatomySourceError: the download failed, or the file's sha256 is not :data:`SHA256` (nothing is installed).
    """
    dest = template_path()
    if dest.is_file() and sha256_file(dest) == SHA256 and source is None:
        return dest
    with tempfile.TemporaryDirectory(prefix="varnet_ds-anatomy-") as tmp:
        tmp_dir = Path(tmp)
        if source is not None and not Path(source).is_file():
            raise AnatomySourceError(f"--from {source}: no such file")
        wheel = Path(source) if source is not None else _download_wheel(tmp_dir)
        extracted = _extract(wheel, tmp_dir)
        digest = sha256_file(extracted)
        if digest != SHA256:
            raise AnatomySourceError(f"{wheel}: the template has sha256 {digest}, expected {SHA256} ({NAME}); "
                                     "not installed")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dest) as out:
                out.write_bytes(extracted.read_bytes())
        except OSError as err:
            raise AnatomySourceError(f"cannot write {dest}: {err}; choose a writable folder with "
                                     f"{ENV_DIR}=DIR") from None
    return require()


@entry_point
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: ``fetch [--from FILE]``, ``check``, ``path``; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m varnet_ds.sim.anatomy", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help=f"download {NILEARN}'s wheel, extract the template, verify, store")
    f.add_argument("--from", dest="source", type=Path, help="a local nilearn wheel or the template .nii.gz")
    sub.add_parser("check", help="exit 0 when the anatomy file is installed and verified")
    sub.add_parser("path", help="print where the anatomy file is looked for")
    args = p.parse_args(argv)
    if args.cmd == "path":
        print(template_path())
        return 0
    try:
        path = fetch(args.source) if args.cmd == "fetch" else require()
    except AnatomySourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"anatomy: {path} ({NAME}, sha256 {SHA256[:12]}… verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
