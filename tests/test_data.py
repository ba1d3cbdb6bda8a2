"""IDX reading, MNIST / Fashion-MNIST loading and image reading: the real data sets where
present, and small files the tests write (served by a loopback HTTP mirror for downloads)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import struct
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import MNIST_DIR

from fastsoftmax import data

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not all((FASHION_DIR / f"{s}.gz").is_file() for s, _ in data._FASHION_MNIST_FILES["train"])
    or not all((FASHION_DIR / f"{s}.gz").is_file() for s, _ in data._FASHION_MNIST_FILES["test"]),
    reason=f"Fashion-MNIST is not at {FASHION_DIR} (apt-get install dataset-fashion-mnist)",
)
needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"the MNIST test set is not at {MNIST_DIR}",
)


@pytest.fixture(autouse=True)
def isolated_locations(tmp_path_factory, monkeypatch):
    """No test sees the user's $FASTSOFTMAX_DATA_DIR or ~/.cache; returns the cache root."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.delenv("FASTSOFTMAX_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


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


def _fake_split(directory: Path, n=5, compress=True, split="test", seed=0):
    """Write a small random split (images (n, 28, 28), labels (n,)) into `directory`."""
    prefix = "t10k" if split == "test" else "train"
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / f"{prefix}-images-idx3-ubyte", images, compress=compress)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, compress=compress)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_load_from_dir_and_env(tmp_path, monkeypatch, compress, isolated_locations):
    _fake_split(tmp_path, compress=compress)
    x, y = data.load("mnist", "test", data_dir=tmp_path, download=False)
    assert x.shape == (5, 784) and y.shape == (5,) and y.dtype == np.int64
    # $FASTSOFTMAX_DATA_DIR holds one folder per dataset: $FASTSOFTMAX_DATA_DIR/mnist
    monkeypatch.setitem(data.SYSTEM_DATA_DIRS, "mnist", ())
    monkeypatch.setenv("FASTSOFTMAX_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError, match=r"mnist"):
        data.load("mnist", "test", download=False)
    _fake_split(tmp_path / "mnist", n=3, compress=compress, seed=9)
    assert len(data.load("mnist", "test", download=False)[0]) == 3


def test_env_dir_holds_one_folder_per_dataset(tmp_path, monkeypatch, isolated_locations):
    """MNIST and Fashion-MNIST share file names: each lives in its own folder of
    $FASTSOFTMAX_DATA_DIR, and one's files are never read as the other's."""
    monkeypatch.setitem(data.SYSTEM_DATA_DIRS, "fashion-mnist", ())
    _fake_split(tmp_path / "mnist", n=4, split="train", seed=1)
    monkeypatch.setenv("FASTSOFTMAX_DATA_DIR", str(tmp_path))
    assert len(data.load("mnist", "train", download=False)[0]) == 4
    with pytest.raises(data.DatasetNotFoundError, match=r"fashion-mnist"):
        data.load("fashion-mnist", "train", download=False)
    _fake_split(tmp_path / "fashion-mnist", n=6, split="train", seed=2)
    assert len(data.load("fashion-mnist", "train", download=False)[0]) == 6
    assert data.default_data_dir("fashion-mnist") == tmp_path / "fashion-mnist"


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
    """An HTTP server on 127.0.0.1 serving a folder, standing in for the MNIST and
    Fashion-MNIST mirrors (after a first mirror that refuses connections)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    monkeypatch.setattr(http.server.SimpleHTTPRequestHandler, "log_message", lambda *a: None)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    mirrors = ("http://127.0.0.1:1/nothing-here/", f"http://127.0.0.1:{server.server_port}/")
    monkeypatch.setattr(data, "_MNIST_MIRRORS", mirrors)
    monkeypatch.setattr(data, "_FASHION_MNIST_MIRRORS", mirrors)
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


# --- validation of the image and label files ------------------------------------------


def test_load_checks_image_and_label_files_name_the_file(tmp_path):
    _fake_split(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 784), np.uint8), compress=True)
    with pytest.raises(
        data.IDXFormatError,
        match=r"t10k-images-idx3-ubyte\.gz: expected an IDX image file of shape \(n, 28, 28\) "
        r"uint8 .*got shape \(5, 784\) uint8",
    ):
        data.load("mnist", "test", data_dir=tmp_path, download=False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 28, 28), np.int32), compress=True)
    with pytest.raises(data.IDXFormatError, match=r"images-idx3-ubyte\.gz: .*got shape .* int32"):
        data.load("mnist", "test", data_dir=tmp_path, download=False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 32, 32), np.uint8), compress=True)
    with pytest.raises(data.IDXFormatError, match=r"images must be 28x28.*\(5, 32, 32\)"):
        data.load("mnist", "test", data_dir=tmp_path, download=False)
    _fake_split(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((5, 1), np.uint8), compress=True)
    with pytest.raises(
        data.IDXFormatError,
        match=r"t10k-labels-idx1-ubyte\.gz: expected an IDX label file of shape \(n,\) uint8",
    ):
        data.load("mnist", "test", data_dir=tmp_path, download=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(5, 10, np.uint8), compress=True)
    with pytest.raises(data.IDXFormatError, match=r"labels-idx1-ubyte\.gz: labels must be 0-9"):
        data.load("mnist", "test", data_dir=tmp_path, download=False)


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    gz = write_idx(tmp_path / "a", a, compress=True)
    renamed = gz.rename(tmp_path / "compressed-without-suffix")
    np.testing.assert_array_equal(data.read_idx(renamed), a)


# --- where load() looks ---------------------------------------------------------------


def test_fashion_mnist_location_order(tmp_path, monkeypatch, isolated_locations):
    """data_dir beats $FASTSOFTMAX_DATA_DIR beats the cache beats the system folder; each
    location holds a split of a different size, so n says which one was read."""
    given, env, system = tmp_path / "given", tmp_path / "env", tmp_path / "system"
    cache = isolated_locations / "fastsoftmax" / "fashion-mnist"
    _fake_split(given, n=2, split="train", seed=1)
    _fake_split(env / "fashion-mnist", n=3, split="train", seed=2, compress=False)  # IDX too
    _fake_split(cache, n=4, split="train", seed=3)
    images, labels = _fake_split(system, n=5, split="train", seed=4)
    monkeypatch.setitem(data.SYSTEM_DATA_DIRS, "fashion-mnist", (system,))
    monkeypatch.setenv("FASTSOFTMAX_DATA_DIR", str(env))

    def n_loaded(**kw):
        x, y = data.load("fashion-mnist", "train", download=False, **kw)
        assert x.dtype == np.uint8 and x.flags.c_contiguous and y.dtype == np.int64
        return len(x)

    assert n_loaded(data_dir=given) == 2
    assert n_loaded() == 3
    monkeypatch.delenv("FASTSOFTMAX_DATA_DIR")
    assert n_loaded() == 4
    for f in cache.iterdir():
        f.unlink()
    x, y = data.load("fashion-mnist", "train", download=False)
    np.testing.assert_array_equal(x, images.reshape(5, 784))
    np.testing.assert_array_equal(y, labels)
    # a folder with only one of the two files does not mix with another folder's file
    (given / "train-labels-idx1-ubyte.gz").unlink()
    assert n_loaded(data_dir=given) == 5
    # the system folder is for fashion-mnist only
    with pytest.raises(data.DatasetNotFoundError):
        data.load("mnist", "train", download=False)


def test_offline_errors_list_every_missing_file_and_how_to_supply_them(tmp_path, monkeypatch):
    system = tmp_path / "system-empty"
    monkeypatch.setitem(data.SYSTEM_DATA_DIRS, "fashion-mnist", (system,))
    folder = tmp_path / "mine"
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("fashion-mnist", "train", data_dir=folder, download=False)
    msg = str(info.value)
    for needed in (
        "fashion-mnist train split",
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        f"missing from {folder} and {system}",
        f"put the files in {folder}",
        "data_dir",
        "--data-dir",
        "$FASTSOFTMAX_DATA_DIR",
        "download=False",
        "--no-download",
        "sudo apt-get install dataset-fashion-mnist",
    ):
        assert needed in msg, (needed, msg)
    # only what is missing is listed
    _fake_split(folder, split="train")
    (folder / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("fashion-mnist", "train", data_dir=folder, download=False)
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz (or uncompressed" in msg
    assert "train-labels-idx1-ubyte" not in msg
    # MNIST has no apt route
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("mnist", "train", data_dir=tmp_path / "empty", download=False)
    assert "apt-get" not in str(info.value) and "train-labels-idx1-ubyte.gz" in str(info.value)


def test_every_mirror_failing_says_why_and_what_is_missing(mirror, tmp_path, monkeypatch):
    """The loopback mirror serves nothing: one mirror refuses, the other answers 404."""
    monkeypatch.setitem(data.SYSTEM_DATA_DIRS, "fashion-mnist", ())
    target = tmp_path / "target"
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("fashion-mnist", "test", data_dir=target, progress=False)
    msg = str(info.value)
    assert "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz" in msg
    assert "Downloading t10k-images-idx3-ubyte.gz failed on every mirror" in msg
    for url in data._FASHION_MNIST_MIRRORS:
        assert url + "t10k-images-idx3-ubyte.gz: " in msg
    assert "404" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert list(target.iterdir()) == []
    # a folder that cannot be created is reported the same way, not as a bare OSError
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(data.DatasetNotFoundError, match=r"cannot write into .*a-file/sub"):
        data.load("fashion-mnist", "test", data_dir=blocker / "sub", progress=False)


# --- the real Fashion-MNIST files (Debian's dataset-fashion-mnist) ----------------------


@needs_fashion
def test_real_fashion_mnist_from_the_system_folder():
    # isolated_locations: no data_dir, no $FASTSOFTMAX_DATA_DIR, an empty cache
    assert FASHION_DIR in data.SYSTEM_DATA_DIRS["fashion-mnist"]
    x, y = data.load("fashion-mnist", "train", download=False)
    assert x.shape == (60000, 784) and x.dtype == np.uint8 and x.flags.c_contiguous
    assert y.shape == (60000,) and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [6000] * 10
    assert y[:4].tolist() == [9, 0, 0, 3]  # ankle boot, T-shirt, T-shirt, dress
    assert abs(x.mean() / 255 - 0.2860) < 5e-4  # the usual normalisation mean
    xt, yt = data.load("fashion-mnist", "test", download=False)
    assert xt.shape == (10000, 784) and yt.shape == (10000,)
    assert np.bincount(yt, minlength=10).tolist() == [1000] * 10
    assert yt.min() == 0 and yt.max() == 9


@needs_fashion
def test_debian_fashion_files_are_the_official_ones():
    """Debian's packaging strips the file name from each .gz header and sets its mtime, so
    `md5sum` differs from the official MD5; putting back the name and the official mtime
    (2017-08-31) must give exactly the MD5 in data._FASHION_MNIST_FILES."""
    mtimes = {"train": 1504176606, "test": 1504176627}
    for split, files in data._FASHION_MNIST_FILES.items():
        for stem, md5 in files:
            raw = (FASHION_DIR / f"{stem}.gz").read_bytes()
            assert raw[:4] == b"\x1f\x8b\x08\x00", "expected a gzip header without a name"
            official = (
                b"\x1f\x8b\x08\x08"
                + struct.pack("<I", mtimes[split])
                + raw[8:10]
                + stem.encode()
                + b"\0"
                + raw[10:]
            )
            assert hashlib.md5(official).hexdigest() == md5, stem
            assert gzip.decompress(official) == gzip.decompress(raw)


# --- downloading Fashion-MNIST ---------------------------------------------------------


def _serve_fake_fashion(mirror: Path, monkeypatch, split="train", n=7):
    """Fake official files on the loopback mirror, with their MD5s in the table."""
    images, labels = _fake_split(mirror, n=n, split=split, seed=5)
    files = tuple(
        (stem, hashlib.md5((mirror / f"{stem}.gz").read_bytes()).hexdigest())
        for stem, _ in data._FASHION_MNIST_FILES[split]
    )
    monkeypatch.setitem(data._FASHION_MNIST_FILES, split, files)
    monkeypatch.setitem(data.SYSTEM_DATA_DIRS, "fashion-mnist", ())
    return images, labels


def test_fashion_download_with_progress_bar(mirror, tmp_path, monkeypatch, capsys):
    from tqdm import tqdm

    images, labels = _serve_fake_fashion(mirror, monkeypatch)
    monkeypatch.setattr(data, "_CHUNK_SIZE", 1000)  # several chunks per file
    cache = tmp_path / "cache"
    x, y = data.load("fashion-mnist", "train", data_dir=cache)  # progress defaults to on
    np.testing.assert_array_equal(x, images.reshape(len(images), 784))
    np.testing.assert_array_equal(y, labels)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        assert (cache / f"{stem}.gz").read_bytes() == (mirror / f"{stem}.gz").read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    out, err = capsys.readouterr()
    assert out == ""
    size = (mirror / "train-images-idx3-ubyte.gz").stat().st_size
    assert "train-images-idx3-ubyte.gz: 100%" in err and "train-labels-idx1-ubyte.gz" in err
    total = tqdm.format_sizeof(size, divisor=1024)
    assert f"{total}/{total}" in err  # the Content-Length is the bar's total
    # found on disk next time: no download, no bar
    data.load("fashion-mnist", "train", data_dir=cache, download=False)
    assert capsys.readouterr().err == ""


def test_fashion_download_without_progress_bar(mirror, tmp_path, monkeypatch, capsys):
    images, _ = _serve_fake_fashion(mirror, monkeypatch, split="test", n=3)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # not even imported
    x, _ = data.load("fashion-mnist", "test", data_dir=tmp_path / "c", progress=False)
    np.testing.assert_array_equal(x, images.reshape(3, 784))
    assert capsys.readouterr() == ("", "")


def test_fashion_download_rejects_a_corrupt_file(mirror, tmp_path, monkeypatch):
    _serve_fake_fashion(mirror, monkeypatch)
    payload = (mirror / "train-labels-idx1-ubyte.gz").read_bytes()
    flipped = payload[:20] + bytes([payload[20] ^ 0xFF]) + payload[21:]
    (mirror / "train-labels-idx1-ubyte.gz").write_bytes(flipped)
    target = tmp_path / "t"
    with pytest.raises(data.DatasetNotFoundError, match=r"MD5 [0-9a-f]{32} does not match"):
        data.load("fashion-mnist", "train", data_dir=target, progress=False)
    # the images arrived intact and were kept; the corrupt labels left nothing behind
    assert [p.name for p in target.iterdir()] == ["train-images-idx3-ubyte.gz"]


@pytest.fixture
def cutting_mirror(tmp_path, monkeypatch):
    """A loopback mirror that announces each file's full Content-Length, sends half of it
    and closes the connection: a download interrupted by the network."""
    served: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = served.get(self.path.rsplit("/", 1)[-1])
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(
        data, "_FASHION_MNIST_MIRRORS", (f"http://127.0.0.1:{server.server_port}/",)
    )
    monkeypatch.setitem(data.SYSTEM_DATA_DIRS, "fashion-mnist", ())
    yield served
    server.shutdown()


def test_interrupted_download_leaves_nothing_that_looks_complete(
    cutting_mirror, tmp_path, monkeypatch
):
    src = tmp_path / "src"
    _fake_split(src, split="test", n=50)
    for stem, _ in data._FASHION_MNIST_FILES["test"]:
        body = (src / f"{stem}.gz").read_bytes()
        cutting_mirror[f"{stem}.gz"] = body
    monkeypatch.setitem(
        data._FASHION_MNIST_FILES,
        "test",
        tuple(
            (stem, hashlib.md5(cutting_mirror[f"{stem}.gz"]).hexdigest())
            for stem, _ in data._FASHION_MNIST_FILES["test"]
        ),
    )
    monkeypatch.setattr(data, "_CHUNK_SIZE", 512)
    target = tmp_path / "target"
    size = len(cutting_mirror["t10k-images-idx3-ubyte.gz"])
    with pytest.raises(
        data.DatasetNotFoundError, match=rf"incomplete: received {size // 2} of {size} bytes"
    ):
        data.load("fashion-mnist", "test", data_dir=target, progress=False)
    assert list(target.iterdir()) == []
    with pytest.raises(data.DatasetNotFoundError):
        data.load("fashion-mnist", "test", data_dir=target, download=False)


def test_ctrl_c_during_download_leaves_nothing_that_looks_complete(mirror, tmp_path, monkeypatch):
    _serve_fake_fashion(mirror, monkeypatch)
    monkeypatch.setattr(data, "_CHUNK_SIZE", 256)
    seen = []

    class InterruptingBar:  # stands in for tqdm.tqdm: Ctrl-C after the second chunk
        def __init__(self, total=None, desc=None, **kwargs):
            seen.append((desc, total))

        def update(self, n):
            seen.append(n)
            if len(seen) == 3:
                raise KeyboardInterrupt

        def close(self):
            seen.append("closed")

    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=InterruptingBar))
    target = tmp_path / "target"
    with pytest.raises(KeyboardInterrupt):
        data.load("fashion-mnist", "train", data_dir=target)
    size = (mirror / "train-images-idx3-ubyte.gz").stat().st_size
    assert seen == [("train-images-idx3-ubyte.gz", size), 256, 256, "closed"]
    assert list(target.iterdir()) == []


# --- the optional torchvision route -----------------------------------------------------


def test_torchvision_source_without_torchvision(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install torchvision, or use the default source"):
        data.load("mnist", "test", data_dir=tmp_path, source="torchvision")
    with pytest.raises(ValueError, match=r"source must be one of \('idx', 'torchvision'\)"):
        data.load("mnist", "test", data_dir=tmp_path, source="tfds")


def test_torchvision_source_converts_data_and_targets(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (4, 28, 28)).astype(np.uint8)
    targets = np.array([3, 1, 4, 1], np.int64)
    calls = []

    class FakeTensor:  # like a CPU torch tensor: .numpy()
        def __init__(self, a):
            self._a = a

        def numpy(self):
            return self._a

    class FakeDataset:
        def __init__(self, root, train, download):
            calls.append((type(self).__name__, root, train, download))
            # a non-C-contiguous array with the same values
            self.data = FakeTensor(np.asfortranarray(images))
            self.targets = FakeTensor(targets) if type(self).__name__ == "MNIST" else targets

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(
        MNIST=type("MNIST", (FakeDataset,), {}),
        FashionMNIST=type("FashionMNIST", (FakeDataset,), {}),
    )
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    for name, split, cls in (
        ("mnist", "train", "MNIST"),
        ("fashion-mnist", "test", "FashionMNIST"),
    ):
        x, y = data.load(name, split, data_dir=tmp_path, download=False, source="torchvision")
        assert calls[-1] == (cls, str(tmp_path), split == "train", False)
        assert x.shape == (4, 784) and x.dtype == np.uint8 and x.flags.c_contiguous
        assert y.dtype == np.int64 and y.tolist() == [3, 1, 4, 1]
        np.testing.assert_array_equal(x[2], images[2].ravel())
    fake.datasets.MNIST.__init__ = lambda self, **kw: self.__dict__.update(
        data=images / 255.0, targets=targets
    )
    with pytest.raises(data.IDXFormatError, match=r"MNIST.*expected \.data .*uint8, got .*float"):
        data.load("mnist", "test", data_dir=tmp_path, source="torchvision")


# --- read_images ------------------------------------------------------------------------


def _png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(array).save(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def test_read_images_idx_and_png(tmp_path):
    rng = np.random.default_rng(11)
    stack = rng.integers(0, 256, (3, 28, 28)).astype(np.uint8)
    raw = write_idx(tmp_path / "stack-idx3-ubyte", stack)
    gz = write_idx(tmp_path / "stack2-idx3-ubyte", stack[::-1].copy(), compress=True)
    grey = rng.integers(0, 256, (28, 28)).astype(np.uint8)
    rgb = rng.integers(0, 256, (28, 28, 3)).astype(np.uint8)
    rgb[:14] = grey[:14, :, None]  # R = G = B: the top half is exactly grey
    rgba = np.concatenate([rgb, rng.integers(0, 256, (28, 28, 1)).astype(np.uint8)], axis=2)
    x = data.read_images(
        [
            raw,
            str(gz),
            _png(tmp_path / "g.png", grey),
            _png(tmp_path / "c.png", rgb),
            _png(tmp_path / "a.png", rgba),
        ]
    )
    assert x.shape == (9, 784) and x.dtype == np.uint8 and x.flags.c_contiguous
    np.testing.assert_array_equal(x[:3], stack.reshape(3, 784))
    np.testing.assert_array_equal(x[3:6], stack[::-1].reshape(3, 784))
    np.testing.assert_array_equal(x[6], grey.ravel())
    # ITU-R 601-2 luma, the formula Pillow documents for convert("L")
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    rgb_row = x[7].reshape(28, 28)
    np.testing.assert_array_equal(rgb_row[:14], grey[:14])
    assert np.abs(rgb_row.astype(np.float64) - luma).max() <= 1.0
    np.testing.assert_array_equal(x[8], x[7])  # alpha is dropped
    # one path on its own is accepted
    np.testing.assert_array_equal(data.read_images(tmp_path / "g.png"), grey.reshape(1, 784))


def test_read_images_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"no paths given"):
        data.read_images([])
    wide = _png(tmp_path / "wide.png", np.zeros((28, 32), np.uint8))
    with pytest.raises(
        ValueError, match=r"wide\.png: image is 32x28; images must be 28x28, MNIST-style: a white"
    ):
        data.read_images([wide])
    big = write_idx(tmp_path / "big-idx3-ubyte", np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"big-idx3-ubyte: .*images must be 28x28.*\(2, 32, 32\)"):
        data.read_images([big])
    labels = write_idx(tmp_path / "labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match=r"labels-idx1-ubyte: expected an IDX image file"):
        data.read_images([labels])
    deep = _png(tmp_path / "deep.png", np.zeros((28, 28), np.uint16))
    with pytest.raises(ValueError, match=r"deep\.png: unsupported PNG mode 'I;16'"):
        data.read_images([deep])
    jpeg_like = tmp_path / "photo.jpg"
    jpeg_like.write_bytes(b"\xff\xd8\xff\xe0 not handled")
    with pytest.raises(ValueError, match=r"photo\.jpg: neither an IDX image file .* nor a PNG"):
        data.read_images([jpeg_like])
    with pytest.raises(IsADirectoryError, match=r"directories are not expanded"):
        data.read_images([tmp_path])
    with pytest.raises(FileNotFoundError):
        data.read_images([tmp_path / "absent.png"])
    ok = _png(tmp_path / "ok.png", np.zeros((28, 28), np.uint8))
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    with pytest.raises(
        ImportError, match=r"ok\.png.*needs Pillow: pip install 'fastsoftmax\[plot\]'"
    ):
        data.read_images([ok])
    # IDX files need no Pillow
    assert (
        data.read_images([write_idx(tmp_path / "i", np.ones((1, 28, 28), np.uint8))]).sum() == 784
    )


@needs_mnist
def test_read_images_real_mnist_png_round_trip(tmp_path, mnist_test):
    from PIL import Image

    first = data.read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")[:3]
    paths = [_png(tmp_path / f"digit{i}.png", img) for i, img in enumerate(first)]
    with Image.open(paths[0]) as im:
        assert (im.mode, im.size) == ("L", (28, 28))
    x = data.read_images(paths)
    np.testing.assert_array_equal(x, mnist_test[0][:3])
    assert mnist_test[1][:3].tolist() == [7, 2, 1]  # the digits these images show
    # the whole IDX file through read_images equals load()'s X
    np.testing.assert_array_equal(
        data.read_images([MNIST_DIR / "t10k-images-idx3-ubyte.gz"]), mnist_test[0]
    )
