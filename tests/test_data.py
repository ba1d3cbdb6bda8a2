"""IDX reading and MNIST loading: the real test set, and small files the tests write."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import MNIST_DIR

from fastsoftmax import data


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False, truncate: int = 0) -> Path:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.array(array.shape, ">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    payload = payload[: len(payload) - truncate]
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def test_real_mnist_test_set(mnist_test):
    x, y = mnist_test
    assert x.shape == (10000, 784) and x.dtype == np.uint8 and x.flags.c_contiguous
    assert y.shape == (10000,) and y.dtype == np.int64
    # label counts and payload checksums from ../shared/data/mnist/README.md
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    images = data.read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = data.read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28)
    assert hashlib.md5(gzip.open(MNIST_DIR / "t10k-images-idx3-ubyte.gz").read()).hexdigest() == (
        "2646ac647ad5339dbf082846283269ea"
    )
    np.testing.assert_array_equal(images.reshape(10000, -1), x)
    np.testing.assert_array_equal(labels, y)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, compress, dtype):
    a = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    if dtype == np.uint8:
        a = np.abs(a).astype(dtype)
    back = data.read_idx(write_idx(tmp_path / "a.idx", a, compress=compress))
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, a)


def test_bad_idx_files_name_the_file(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    short = write_idx(tmp_path / "short.idx", a, truncate=1)
    with pytest.raises(
        data.IDXFormatError, match=r"short\.idx: IDX header says shape \(3, 4\) \(12 bytes"
    ):
        data.read_idx(short)
    junk = tmp_path / "junk.idx"
    junk.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(
        data.IDXFormatError, match=r"junk\.idx: not an IDX file \(magic bytes 504b0304\)"
    ):
        data.read_idx(junk)
    gz = write_idx(tmp_path / "cut.idx", a, compress=True)
    gz.write_bytes(gz.read_bytes()[:-8])  # a truncated gzip stream
    with pytest.raises(data.IDXFormatError, match=r"cut\.idx\.gz: cannot read"):
        data.read_idx(gz)
    empty = tmp_path / "empty.idx"
    empty.write_bytes(b"")
    with pytest.raises(data.IDXFormatError, match=r"empty\.idx: not an IDX file"):
        data.read_idx(empty)


def _fake_split(directory: Path, n=5, compress=True):
    rng = np.random.default_rng(0)
    write_idx(
        directory / "t10k-images-idx3-ubyte",
        rng.integers(0, 256, (n, 28, 28)).astype(np.uint8),
        compress=compress,
    )
    write_idx(
        directory / "t10k-labels-idx1-ubyte",
        rng.integers(0, 10, n).astype(np.uint8),
        compress=compress,
    )


@pytest.mark.parametrize("compress", [False, True])
def test_load_from_dir_and_env(tmp_path, monkeypatch, compress):
    _fake_split(tmp_path, compress=compress)
    x, y = data.load("mnist", "test", data_dir=tmp_path, download=False)
    assert x.shape == (5, 784) and y.shape == (5,) and y.dtype == np.int64
    monkeypatch.setenv("FASTSOFTMAX_DATA_DIR", str(tmp_path))
    x2, _ = data.load("mnist", "test", download=False)
    np.testing.assert_array_equal(x, x2)


def test_missing_files_offline_say_what_and_where(tmp_path):
    with pytest.raises(
        data.DatasetNotFoundError,
        match=r"t10k-images-idx3-ubyte\.gz .* is missing from .*FASTSOFTMAX_DATA_DIR",
    ):
        data.load("mnist", "test", data_dir=tmp_path, download=False)
    with pytest.raises(ValueError, match=r"split must be one of"):
        data.load("mnist", "validation", data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"name must be one of"):
        data.load("cifar10", "test", data_dir=tmp_path)


def test_mismatched_image_and_label_counts(tmp_path):
    _fake_split(tmp_path, n=5)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8), compress=True)
    with pytest.raises(
        data.IDXFormatError, match=r"expected images \(n, rows, cols\) and labels \(n,\)"
    ):
        data.load("mnist", "test", data_dir=tmp_path, download=False)


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving a folder, standing in for the MNIST mirrors."""
    served = tmp_path / "served"
    served.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(
        data,
        "_MNIST_MIRRORS",
        ("http://127.0.0.1:1/nothing-here/", f"http://127.0.0.1:{server.server_port}/"),
    )
    yield served
    server.shutdown()


def test_download_verifies_md5_and_writes_atomically(mirror, tmp_path, monkeypatch):
    _fake_split(mirror)
    md5 = {p.name[: -len(".gz")]: hashlib.md5(p.read_bytes()).hexdigest() for p in mirror.iterdir()}
    files = (
        ("t10k-images-idx3-ubyte", md5["t10k-images-idx3-ubyte"]),
        ("t10k-labels-idx1-ubyte", md5["t10k-labels-idx1-ubyte"]),
    )
    monkeypatch.setitem(data._MNIST_FILES, "test", files)
    cache = tmp_path / "cache"
    x, _ = data.load("mnist", "test", data_dir=cache)  # the first mirror fails, the second answers
    assert x.shape == (5, 784)
    assert sorted(p.name for p in cache.iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    # a corrupted download is rejected and leaves nothing that looks complete
    bad = tmp_path / "bad"
    monkeypatch.setitem(data._MNIST_FILES, "test", (("t10k-images-idx3-ubyte", "0" * 32), files[1]))
    with pytest.raises(
        data.DatasetNotFoundError, match=r"MD5 [0-9a-f]{32} does not match the expected 0{32}"
    ):
        data.load("mnist", "test", data_dir=bad)
    assert list(bad.iterdir()) == []
