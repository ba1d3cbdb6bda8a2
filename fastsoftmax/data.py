"""MNIST in its original IDX format: reading, locating and (optionally) downloading.

IDX (http://yann.lecun.com/exdb/mnist/): a big-endian header ``00 00 <type> <ndim>``,
then ``ndim`` uint32 sizes, then the payload in C order.  Files may be gzip-compressed
(``.gz``) or not.  Nothing here unpickles anything.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

# IDX type byte -> dtype (big-endian where it matters)
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

DATASETS = ("mnist",)
SPLITS = ("train", "test")

# The mirrors torchvision uses, in order, and the MD5 of each official .gz file.
_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_MNIST_FILES = {
    "train": (
        ("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432"),
    ),
    "test": (
        ("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
}


class IDXFormatError(ValueError):
    """A file is not a valid IDX file (bad magic, dimensions, or length)."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not on disk and could not be downloaded."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a native-endian array of its shape.

    Raises IDXFormatError naming the file when the header is invalid or the payload is
    shorter or longer than the header says.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:  # gzip raises these on a truncated or corrupt file
        raise IDXFormatError(f"{path}: cannot read ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise IDXFormatError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'})")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise IDXFormatError(f"{path}: IDX header declares {ndim} dimensions but is truncated")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IDXFormatError(
            f"{path}: IDX header says shape {shape} ({expected} bytes of data) but the "
            f"file holds {len(raw) - header} bytes"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def default_data_dir(name: str) -> Path:
    """``$FASTSOFTMAX_DATA_DIR`` if set, else ``~/.cache/fastsoftmax/<name>``."""
    env = os.environ.get("FASTSOFTMAX_DATA_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "fastsoftmax" / name


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _download(stem: str, md5: str, directory: Path) -> Path:
    """Fetch <stem>.gz from the first mirror that answers; verify its MD5; write it
    atomically (a temporary file renamed into place), so an interrupted download never
    leaves a file that looks complete."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{stem}.gz"
    errors = []
    for mirror in _MNIST_MIRRORS:
        url = mirror + f"{stem}.gz"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                payload = resp.read()
        except (urllib.error.URLError, OSError) as err:
            errors.append(f"{url}: {err}")
            continue
        digest = hashlib.md5(payload).hexdigest()
        if digest != md5:
            errors.append(f"{url}: MD5 {digest} does not match the expected {md5}")
            continue
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{stem}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target
    raise DatasetNotFoundError(
        f"could not download {stem}.gz into {directory}:\n  "
        + "\n  ".join(errors)
        + f"\nWithout network access, copy {stem}.gz there, or point data_dir (the CLI's "
        "--data-dir) or $FASTSOFTMAX_DATA_DIR at a folder that holds it."
    )


def load(
    name: str = "mnist",
    split: str = "test",
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a dataset split as (X, y): X uint8 C-contiguous (n, 784), y int64 (n,).

    Files are looked for in `data_dir`, else $FASTSOFTMAX_DATA_DIR, else
    ~/.cache/fastsoftmax/<name>, as ``<file>.gz`` or uncompressed.  Missing files are
    downloaded (MD5-checked) when `download` is true; otherwise, or when no mirror
    answers, DatasetNotFoundError says which files are missing and where to put them.
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    directory = Path(data_dir) if data_dir is not None else default_data_dir(name)
    paths = []
    for stem, md5 in _MNIST_FILES[split]:
        found = _find(directory, stem)
        if found is None:
            if not download:
                raise DatasetNotFoundError(
                    f"{name} {split} split: {stem}.gz (or {stem}) is missing from {directory}; "
                    f"put the file there, point data_dir or $FASTSOFTMAX_DATA_DIR at the "
                    f"folder holding it, or allow download"
                )
            found = _download(stem, md5, directory)
        paths.append(found)
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise IDXFormatError(
            f"{paths[0]} and {paths[1]}: expected images (n, rows, cols) and labels (n,), "
            f"got {images.shape} and {labels.shape}"
        )
    x = np.ascontiguousarray(images.reshape(images.shape[0], -1), dtype=np.uint8)
    return x, labels.astype(np.int64)
