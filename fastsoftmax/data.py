"""MNIST and Fashion-MNIST in their original IDX format: reading, locating, downloading.

IDX (http://yann.lecun.com/exdb/mnist/): a big-endian header ``00 00 <type> <ndim>``,
then ``ndim`` uint32 sizes, then the payload in C order.  Files may be gzip-compressed
(``.gz``) or not.  Nothing here unpickles anything.

Public functions:

* :func:`load` -- a dataset split as ``(X uint8 (n, 784), y int64 (n,))``, found on disk
  or downloaded (MD5-checked, atomically written); optionally through torchvision.
* :func:`read_idx` -- any IDX file as a NumPy array.
* :func:`read_images` -- 28x28 images from IDX image files and PNG files, as (n, 784).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ._files import atomic_write

# IDX type byte -> dtype (big-endian where it matters)
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

DATASETS = ("mnist", "fashion-mnist")
SPLITS = ("train", "test")
SOURCES = ("idx", "torchvision")
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

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
_FASHION_MNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
# Debian's dataset-fashion-mnist ships the same deflate streams with a normalised gzip
# header (no file name, mtime = the package date), so `md5sum` of its .gz files differs
# from these; restoring the header's name and mtime gives exactly these MD5s.
_FASHION_MNIST_FILES = {
    "train": (
        ("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe"),
    ),
    "test": (
        ("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
}

# Read-only system folders searched after data_dir / $FASTSOFTMAX_DATA_DIR / the cache
# and before downloading.  Debian's package dataset-fashion-mnist installs the four
# official .gz files in /usr/share/datasets/fashion-mnist/.
SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {
    "mnist": (),
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}
_APT_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}

_CHUNK_SIZE = 1 << 16  # download read size, bytes
_TIMEOUT_S = 30.0
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GZIP_MAGIC = b"\x1f\x8b"
_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")  # 8-bit modes convert("L") maps faithfully


class IDXFormatError(ValueError):
    """A file is not a valid IDX file (bad magic, dimensions, length, type or shape)."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not on disk and could not be downloaded."""


class _DownloadError(Exception):
    """Every mirror failed for one file; args[0] is the list of per-URL reasons."""


def _files(name: str) -> dict[str, tuple[tuple[str, str], ...]]:
    # looked up at call time so tests can monkeypatch the module attributes
    return _MNIST_FILES if name == "mnist" else _FASHION_MNIST_FILES


def _mirrors(name: str) -> tuple[str, ...]:
    return _MNIST_MIRRORS if name == "mnist" else _FASHION_MNIST_MIRRORS


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a native-endian array of its shape.

    Compression is recognised from the content (gzip magic bytes), not the file name.
    Returns an array of the header's shape and dtype (uint8 for MNIST files).  Raises
    IDXFormatError naming the file when it cannot be decompressed, when the header is
    invalid, or when the payload is shorter or longer than the header says; OSError
    (e.g. FileNotFoundError) when it cannot be opened.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            if fh.read(2) == _GZIP_MAGIC:
                fh.seek(0)
                with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                    raw = gz.read()
            else:
                fh.seek(0)
                raw = fh.read()
        except (OSError, EOFError, zlib.error) as err:  # a truncated or corrupt gzip stream
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


def _check_images(images: np.ndarray, path: Path) -> None:
    if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise IDXFormatError(
            f"{path}: expected an IDX image file of shape (n, 28, 28) uint8 (images must be "
            f"28x28), got shape {images.shape} {images.dtype}"
        )


def _check_labels(labels: np.ndarray, path: Path) -> None:
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IDXFormatError(
            f"{path}: expected an IDX label file of shape (n,) uint8, got shape "
            f"{labels.shape} {labels.dtype}"
        )
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise IDXFormatError(
            f"{path}: labels must be 0-{NUM_CLASSES - 1}, found {int(labels.max())}"
        )


def default_data_dir(name: str) -> Path:
    """``$FASTSOFTMAX_DATA_DIR/<name>`` if the variable is set, else ``$XDG_CACHE_HOME``
    (default ``~/.cache``) ``/fastsoftmax/<name>``: where :func:`load` looks first when no
    data_dir is given, and where it downloads to.

    The variable names a root with one folder per dataset, as the cache is laid out:
    MNIST and Fashion-MNIST use the same file names, so one shared folder would hand
    one dataset's files to the other."""
    env = os.environ.get("FASTSOFTMAX_DATA_DIR")
    if env:
        return Path(env) / name
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "fastsoftmax" / name


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _fetch(url: str, out: BinaryIO, *, desc: str, progress: bool) -> str:
    """Stream `url` into `out` in chunks; return the MD5 of what was received.  Raises
    _DownloadError when fewer bytes arrive than the Content-Length announced."""
    md5 = hashlib.md5(usedforsecurity=False)
    received = 0
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar = None
        if progress:
            try:
                from tqdm import tqdm
            except ImportError:  # a dependency, but a missing bar must not stop a download
                tqdm = None
            if tqdm is not None:
                bar = tqdm(
                    total=total,
                    desc=desc,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    file=sys.stderr,
                )
        try:
            while chunk := resp.read(_CHUNK_SIZE):
                out.write(chunk)
                md5.update(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and received != total:
        raise _DownloadError(f"incomplete: received {received} of {total} bytes")
    return md5.hexdigest()


class _ChecksumError(Exception):
    """A download whose MD5 is not the expected one."""


def _download(stem: str, md5: str, directory: Path, mirrors: Iterable[str], progress: bool) -> Path:
    """Fetch <stem>.gz from the first mirror that answers; verify its MD5; write it
    atomically (streamed into a hidden temporary file in `directory`, then renamed into
    place), so an interrupted download never leaves a file that looks complete.  Raises
    _DownloadError with every mirror's reason when all fail."""
    target = directory / f"{stem}.gz"
    errors = []
    for mirror in mirrors:
        url = mirror + f"{stem}.gz"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _DownloadError([f"cannot write into {directory}: {err}"]) from err
        try:
            with atomic_write(target) as fh:
                digest = _fetch(url, fh, desc=f"{stem}.gz", progress=progress)
                if digest != md5:  # raised inside: the file is not written
                    raise _ChecksumError(f"{url}: MD5 {digest} does not match the expected {md5}")
            return target
        except _ChecksumError as err:
            errors.append(str(err))
        except (OSError, http.client.HTTPException, _DownloadError) as err:
            # URLError, HTTPError, timeouts and refused connections are OSErrors;
            # IncompleteRead (a connection cut mid-body) is an HTTPException
            errors.append(f"{url}: {err}")
    raise _DownloadError(errors)


def _not_found(
    name: str,
    split: str,
    missing: list[str],
    directory: Path,
    looked: list[Path],
    download_errors: list[str] | None,
) -> DatasetNotFoundError:
    names = " and ".join(f"{stem}.gz" for stem in missing)
    what = (
        f"{names} (or uncompressed, without .gz) is missing"
        if len(missing) == 1
        else f"{names} (or the same names without .gz): each is missing"
    )
    where = " and ".join(str(p) for p in looked)
    lines = [
        f"{name} {split} split: {what} from {where}; put the files in {directory}, or point "
        f"data_dir (the CLI's --data-dir) at a folder that holds them, or "
        f"$FASTSOFTMAX_DATA_DIR at a folder with a {name}/ folder that holds them."
    ]
    if download_errors is None:
        lines.append(
            "Downloading is off (download=False; the CLI's --no-download); allow it to fetch "
            f"them from {_mirrors(name)[0]}."
        )
    else:
        lines.append(f"Downloading {missing[0]}.gz failed on every mirror:")
        lines += [f"  {e}" for e in download_errors]
    if name in _APT_PACKAGES:
        system = " or ".join(str(p) for p in SYSTEM_DATA_DIRS.get(name, ())) or "a system folder"
        lines.append(
            f"On Debian or Ubuntu, `sudo apt-get install {_APT_PACKAGES[name]}` puts them in "
            f"{system}, where they are found without downloading."
        )
    return DatasetNotFoundError("\n".join(lines))


def _to_xy(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.ascontiguousarray(images.reshape(images.shape[0], -1), dtype=np.uint8)
    return x, labels.astype(np.int64)


def _load_torchvision(
    name: str, split: str, directory: Path, download: bool
) -> tuple[np.ndarray, np.ndarray]:
    try:
        import torchvision
    except ImportError as err:
        raise ImportError(
            "source='torchvision' needs torchvision, which is not installed: "
            "pip install torchvision, or use the default source='idx'"
        ) from err
    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    ds = cls(root=str(directory), train=split == "train", download=download)

    def as_numpy(t) -> np.ndarray:  # torch tensors (CPU) have .numpy(); anything else asarray
        return np.asarray(t.numpy() if hasattr(t, "numpy") else t)

    images, labels = as_numpy(ds.data), as_numpy(ds.targets)
    where = f"torchvision.datasets.{cls.__name__}(root={str(directory)!r})"
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
        raise IDXFormatError(
            f"{where}: expected .data of shape (n, 28, 28) uint8, got {images.shape} {images.dtype}"
        )
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise IDXFormatError(
            f"{where}: expected integer .targets of shape ({images.shape[0]},), got "
            f"{labels.shape} {labels.dtype}"
        )
    return _to_xy(images, labels)


def load(
    name: str = "mnist",
    split: str = "test",
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
    source: str = "idx",
) -> tuple[np.ndarray, np.ndarray]:
    """Load a dataset split as ``(X, y)``: X uint8 C-contiguous (n, 784), y int64 (n,).

    name: "mnist" or "fashion-mnist"; split: "train" (n = 60000) or "test" (n = 10000).

    The files (``<file>.gz`` or uncompressed) are looked for in `data_dir`, else
    $FASTSOFTMAX_DATA_DIR/<name> (and, for MNIST, $FASTSOFTMAX_DATA_DIR itself), else
    ``~/.cache/fastsoftmax/<name>``; then, read-only, in
    SYSTEM_DATA_DIRS[name] (for "fashion-mnist", Debian's /usr/share/datasets/fashion-mnist).
    Images and labels come from the same folder.  When they are missing and `download` is
    true, the official files are downloaded into the first folder, MD5-checked and written
    atomically, with a progress bar on stderr unless `progress` is false.  Otherwise, or
    when every mirror fails, DatasetNotFoundError lists the missing files and how to
    supply them.  IDXFormatError (a ValueError) names a file that is not a valid image or
    label file or whose counts disagree.

    source="torchvision" loads through torchvision.datasets.MNIST / FashionMNIST
    (root = the first folder above, torchvision's own layout and download) and converts
    to the same result; ImportError if torchvision is not installed.
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    directory = Path(data_dir) if data_dir is not None else default_data_dir(name)
    if source == "torchvision":
        return _load_torchvision(name, split, directory, download)

    files = _files(name)[split]
    system = SYSTEM_DATA_DIRS.get(name, ())
    looked = [directory, *(d for d in system if d != directory)]
    paths: list[Path | None] = [None] * len(files)
    for folder in looked:
        found = [_find(folder, stem) for stem, _ in files]
        if all(found):
            paths = found
            break
    else:
        # nowhere complete: keep what the first folder has, download the rest into it
        paths = [_find(directory, stem) for stem, _ in files]
        for i, (stem, md5) in enumerate(files):
            if paths[i] is not None:
                continue
            missing = [s for (s, _), p in zip(files, paths, strict=True) if p is None]
            if not download:
                raise _not_found(name, split, missing, directory, looked, None)
            try:
                paths[i] = _download(stem, md5, directory, _mirrors(name), progress)
            except _DownloadError as err:
                raise _not_found(name, split, missing, directory, looked, err.args[0]) from None
    images_path, labels_path = paths
    images, labels = read_idx(images_path), read_idx(labels_path)
    _check_images(images, images_path)
    _check_labels(labels, labels_path)
    if images.shape[0] != labels.shape[0]:
        raise IDXFormatError(
            f"{images_path} and {labels_path}: expected images (n, rows, cols) and labels "
            f"(n,) with the same n, got {images.shape[0]} images and {labels.shape[0]} labels"
        )
    return _to_xy(images, labels)


def _read_png(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(
            f"reading PNG files ({path}) needs Pillow: pip install 'fastsoftmax[plot]'"
        ) from err
    with Image.open(path) as im:
        if im.size != IMAGE_SHAPE[::-1]:
            w, h = im.size
            raise ValueError(
                f"{path}: image is {w}x{h}; images must be 28x28, MNIST-style: a white "
                "digit on black"
            )
        if im.mode not in _PNG_MODES:
            raise ValueError(
                f"{path}: unsupported PNG mode {im.mode!r}; save it as 8-bit greyscale "
                "(or RGB/RGBA)"
            )
        grey = im if im.mode == "L" else im.convert("L")
        return np.asarray(grey, dtype=np.uint8).reshape(1, *IMAGE_SHAPE)


def read_images(paths: Iterable[str | os.PathLike] | str | os.PathLike) -> np.ndarray:
    """Read 28x28 images, in order, as uint8 C-contiguous (n, 784).

    Each path is either an IDX image file (gzip-compressed or raw, uint8 of shape
    (k, 28, 28), contributing k rows) or a PNG file (one 28x28 image, contributing one
    row; greyscale as is, RGB/RGBA and other 8-bit modes converted with Pillow's
    ``convert("L")``).  Images should be MNIST-style: a white digit on black.  The file
    type is recognised from its content.  A single path may be passed instead of a list;
    directories are not expanded.

    Raises ValueError for empty `paths`, for a file that is neither IDX nor PNG, or an
    image that is not 28x28 (naming the file and its size; IDXFormatError is a
    ValueError); IsADirectoryError for a directory; FileNotFoundError for a missing file;
    ImportError (naming ``pip install 'fastsoftmax[plot]'``) for a PNG without Pillow.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    blocks = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            raise IsADirectoryError(
                f"{path} is a directory; pass image files (directories are not expanded)"
            )
        with open(path, "rb") as fh:
            head = fh.read(len(_PNG_SIGNATURE))
        if head == _PNG_SIGNATURE:
            blocks.append(_read_png(path))
        elif head[:2] == _GZIP_MAGIC or head[:2] == b"\0\0":
            images = read_idx(path)
            _check_images(images, path)
            blocks.append(images)
        else:
            raise ValueError(f"{path}: neither an IDX image file (.gz or raw) nor a PNG file")
    if not blocks:
        raise ValueError("read_images: no paths given")
    x = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    return np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.uint8)
