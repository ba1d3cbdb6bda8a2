"""Threads: the thread-count settings, the serial/parallel policy, and that no choice
of threads changes a result.

Oracles: the policy's decisions against its cost model worked by hand (a fake clock
makes idleness exact); results of the Numba backend run serially against the same
calls run in parallel, bit for bit; threadpoolctl's own report of BLAS's threads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import _threads
from fastsoftmax._threads import DEFAULT_WAKE_S, EMA, FORGET, IDLE_RANGES, OUTLIER, ThreadPolicy


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def restore_threads():
    yield
    fs.set_num_threads(None)


# ------------------------------------------------------------------ thread counts
def test_set_num_threads_caps_and_none_restores(restore_threads):
    pool = _threads.pool_size()
    default = fs.get_num_threads()
    assert 1 <= default <= pool
    fs.set_num_threads(1)
    assert fs.get_num_threads() == 1
    fs.set_num_threads(10**6)  # more than the pool: capped at the pool
    assert fs.get_num_threads() == pool
    fs.set_num_threads(None)
    assert fs.get_num_threads() == default


def test_thread_limit_is_per_thread_and_nests(restore_threads):
    fs.set_num_threads(None)
    outer = fs.get_num_threads()
    seen = {}
    with fs.thread_limit(1):
        assert fs.get_num_threads() == 1
        with fs.thread_limit(5):  # a looser inner limit does not lift the outer one
            assert fs.get_num_threads() == 1
        other = threading.Thread(target=lambda: seen.setdefault("n", fs.get_num_threads()))
        other.start()
        other.join()
    assert seen["n"] == outer  # another thread is not limited
    assert fs.get_num_threads() == outer


@pytest.mark.parametrize("bad", [0, -2])
def test_bad_thread_counts_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="n must be >= 1"):
        fs.set_num_threads(bad)
    with pytest.raises(ValueError, match="n must be >= 1"):
        with fs.thread_limit(bad):
            pass


@pytest.mark.parametrize("bad", [1.5, "2", True])
def test_thread_counts_must_be_ints(bad):
    with pytest.raises(TypeError, match="n must be a positive int"):
        fs.set_num_threads(bad)


def test_environment_variable_sets_the_default(monkeypatch, restore_threads):
    monkeypatch.setenv(_threads.ENV_THREADS, "1")
    fs.set_num_threads(None)
    assert fs.get_num_threads() == 1
    monkeypatch.setenv(_threads.ENV_THREADS, "two")
    with pytest.raises(ValueError, match=_threads.ENV_THREADS):
        fs.set_num_threads(None)
    monkeypatch.delenv(_threads.ENV_THREADS)


# ------------------------------------------------------------------ the policy
def test_policy_goes_parallel_only_when_the_saving_beats_the_wake_up():
    clock = FakeClock()
    policy = ThreadPolicy({"f": 4e-9}, pool=2, clock=clock)
    # pool never used: the longest idle range; saving = (4 - 2) ns x size
    k, k_decide = policy.idle_ranges()
    assert k == k_decide == len(IDLE_RANGES) - 1
    wake = DEFAULT_WAKE_S[k]
    edge = wake / 2e-9
    assert not policy.parallel_pays("f", int(edge * 0.9), k)
    assert policy.parallel_pays("f", int(edge * 1.1), k)
    # right after a parallel call the pool is awake: the cheapest range
    policy.observe("f", 10**6, True, k, seconds=0.01)
    assert policy.idle_ranges() == (0, 0)
    assert policy.parallel_pays("f", int(DEFAULT_WAKE_S[0] / 2e-9 * 1.1), 0)
    clock.now += 1.0  # a second later it is asleep again
    assert policy.idle_ranges() == (len(IDLE_RANGES) - 1,) * 2


def test_a_burst_of_calls_is_decided_as_if_the_pool_were_awake():
    """Right after a serial call the pool is asleep (its range says so, for learning),
    but the decision uses the time since that call: a loop of large calls goes
    parallel from its second call on, and pays the wake-up once."""
    clock = FakeClock()
    policy = ThreadPolicy({"f": 4e-9}, pool=2, clock=clock)
    last = len(IDLE_RANGES) - 1
    policy.observe("f", 10**5, False, last, seconds=4e-4)
    clock.now += 1e-6
    assert policy.idle_ranges() == (last, 0)
    clock.now += 1.0  # after a pause (a user's other work) the call is cold again
    assert policy.idle_ranges() == (last, last)


def test_policy_learns_the_wake_up_cost_and_the_rates():
    clock = FakeClock()
    policy = ThreadPolicy({"f": 4e-9}, pool=2, clock=clock)
    k = len(IDLE_RANGES) - 1
    # parallel calls after long idleness that took 5 ms more than their work
    for _ in range(40):
        clock.now += 1.0
        policy.observe("f", 10**6, True, k, seconds=2e-3 + 5e-3)
    assert policy.wake[k] == pytest.approx(5e-3, rel=1e-3)
    # so a 1.6 M-element call (3.2 ms saved) now stays serial after idleness ...
    assert not policy.parallel_pays("f", 1_600_000, k)
    # ... but not when the pool is awake
    assert policy.parallel_pays("f", 1_600_000, 0)
    # serial calls teach the serial rate
    for _ in range(60):
        policy.observe("f", 1000, False, k, seconds=1e-6)
    assert policy.serial["f"] == pytest.approx(1e-9, rel=1e-3)
    # awake parallel calls teach the parallel rate
    for _ in range(60):
        policy.observe("f", 1000, True, 0, seconds=DEFAULT_WAKE_S[0] + 0.4e-6)
    assert policy.parallel["f"] == pytest.approx(0.4e-9, rel=1e-2)


def test_one_stalled_call_does_not_set_the_wake_up_cost():
    """A parallel call the VM stalled (100x the expected wake-up) moves the estimate by
    at most EMA (OUTLIER - 1) of it, not to the stall."""
    clock = FakeClock()
    policy = ThreadPolicy({"f": 4e-9}, pool=2, clock=clock)
    k = 1
    before = policy.wake[k]
    size = 600_000
    policy.observe("f", size, True, k, seconds=policy.parallel["f"] * size + 100 * before)
    assert policy.wake[k] == pytest.approx(before * (1 + EMA * (OUTLIER - 1)))
    before = policy.parallel["f"]
    policy.observe("f", size, True, 0, seconds=DEFAULT_WAKE_S[0] + 100 * before * size)
    assert policy.parallel["f"] == pytest.approx(before * (1 + EMA * (OUTLIER - 1)))


def test_a_family_judged_serial_is_tried_on_the_pool_again():
    """After slow parallel calls (a bad patch) the family goes serial; serial decisions
    forget the learned costs toward the defaults, so the pool is tried again within
    a bounded number of calls, and judged serial again if it is still slow."""
    clock = FakeClock()
    policy = ThreadPolicy({"f": 4e-9}, pool=2, clock=clock)
    size, k = 600_000, 1  # 1.2 ms saved by default against a 40 us wake-up
    assert policy.parallel_pays("f", size, k)
    for _ in range(20):  # parallel calls 10 ms over their work
        policy.observe("f", size, True, k, seconds=policy.parallel["f"] * size + 1e-2)
    assert not policy.parallel_pays("f", size, k)
    tries = next(i for i in range(1, 1000) if policy.parallel_pays("f", size, k))
    assert tries < 1 / FORGET * 5  # a few hundred calls at most
    for _ in range(20):  # still slow: serial again
        policy.observe("f", size, True, k, seconds=policy.parallel["f"] * size + 1e-2)
    assert not policy.parallel_pays("f", size, k)
    # a family whose learned costs are at their defaults forgets nothing
    fresh = ThreadPolicy({"g": 4e-9}, pool=2, clock=clock)
    wake, par = list(fresh.wake), dict(fresh.parallel)
    assert not fresh.parallel_pays("g", 10, 4)
    assert fresh.wake == wake and fresh.parallel == par


def test_forced_policy():
    policy = ThreadPolicy({"f": 1.0}, pool=2, clock=FakeClock())
    policy.force = False
    assert not policy.parallel_pays("f", 10**9, 0)
    policy.force = True
    assert policy.parallel_pays("f", 1, 4)


# ------------------------------------------------------------------ results
@pytest.fixture
def numba_policy():
    pytest.importorskip("numba")
    from fastsoftmax import _numba

    policy = _numba.policy
    old = policy.force
    yield policy
    policy.force = old


NB = {"backend": "numba"}
OPS = [
    ("cross_entropy_with_grad", lambda z, y: fs.cross_entropy_with_grad(z, y, **NB)),
    ("cross_entropy", lambda z, y: fs.cross_entropy(z, y, reduction="none", **NB)),
    ("cross_entropy_prob", lambda z, y: fs.cross_entropy_with_grad(z, _onehot(y, z), **NB)),
    ("softmax", lambda z, y: fs.softmax(z, **NB)),
    ("log_softmax", lambda z, y: fs.log_softmax(z, **NB)),
    ("logsumexp", lambda z, y: fs.logsumexp(z, **NB)),
    ("softmax_backward", lambda z, y: fs.softmax_backward(fs.softmax(z), z, **NB)),
    ("log_softmax_backward", lambda z, y: fs.log_softmax_backward(fs.log_softmax(z), z, **NB)),
]


def _assert_same(want, got):
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _onehot(y, z):
    q = np.zeros_like(z)
    q[np.arange(len(y)), y] = 1.0
    return q


@pytest.mark.parametrize("shape", [(3000, 10), (700, 33), (40, 5000)], ids=str)
@pytest.mark.parametrize(("name", "op"), OPS, ids=[n for n, _ in OPS])
def test_results_do_not_depend_on_threads(name, op, shape, numba_policy, restore_threads):
    """Serial, parallel on every allowed thread count, and under thread_limit: the same
    bits (the chunking is a function of the shape alone)."""
    rng = np.random.default_rng(5)
    z = (rng.standard_normal(shape) * 4).astype(np.float32)
    y = rng.integers(0, shape[1], shape[0])
    numba_policy.force = False
    want = op(z, y)
    numba_policy.force = True
    for n in range(1, _threads.pool_size() + 1):
        fs.set_num_threads(n)
        _assert_same(want, op(z, y))
    fs.set_num_threads(None)
    with fs.thread_limit(1):
        _assert_same(want, op(z, y))


def test_numba_backend_times_its_calls_for_the_policy(numba_policy):
    """A call above the serial cut-off is timed and teaches the policy (its serial rate
    moves), one below it is not looked at."""
    from fastsoftmax import _numba

    z = np.random.default_rng(0).standard_normal((2000, 10)).astype(np.float32)
    y = np.zeros(2000, np.int64)
    numba_policy.force = False
    fs.cross_entropy_with_grad(z, y, backend="numba")  # compiled, or loaded, first
    family = ("xent", 4)
    before = numba_policy.serial[family]
    numba_policy.serial[family] = before * 1000  # absurd: a timed call must pull it down
    fs.cross_entropy_with_grad(z, y, backend="numba")
    assert numba_policy.serial[family] < before * 1000
    small = z[: _numba.SERIAL_MAX_ELEMENTS // 10]
    numba_policy.serial[family] = 123.0
    fs.cross_entropy_with_grad(small, y[: len(small)], backend="numba")
    assert numba_policy.serial[family] == 123.0
    numba_policy.serial[family] = before


# ------------------------------------------------------------------ BLAS
def test_blas_limit_runs_blas_single_threaded():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    np.ones((64, 64)) @ np.ones((64, 64))  # BLAS loaded
    with _threads.blas_limit(1):
        infos = threadpoolctl.threadpool_info()
        blas = [i for i in infos if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas)


def test_estimator_prediction_matches_with_blas_limited():
    rng = np.random.default_rng(1)
    X = rng.random((300, 20)).astype(np.float32)
    y = rng.integers(0, 3, 300)
    model = fs.SoftmaxRegression(max_epochs=2, random_state=0).fit(X, y)
    z = X @ model.coef_.T + model.intercept_
    np.testing.assert_array_equal(model.predict(X), model.classes_[np.argmax(z, axis=1)])


# ------------------------------------------------------------------ claimed chunks
@pytest.fixture(scope="module")
def claims():
    """An njit driver of the small-C path's chunk claims: runs `schedule` (a thread
    index per step) against one work queue and returns each claim's (thread, chunk)."""
    numba = pytest.importorskip("numba")
    from fastsoftmax._numba.kernels import _next_chunk, _work_queue

    @numba.njit
    def run(nchunks, nth, schedule):
        work = _work_queue(nchunks, nth)
        c = np.full(nth, -1)
        k = np.zeros(nth, np.int64)
        done = np.zeros(nth, np.bool_)
        got = []
        for t in schedule:
            if done[t]:
                continue
            c[t], k[t] = _next_chunk(work, t, c[t], k[t], nchunks)
            if c[t] < 0:
                done[t] = True
            else:
                got.append((t, c[t]))
        return got

    return run


@pytest.mark.parametrize("nchunks", [1, 2, 7, 64, 469])
@pytest.mark.parametrize("nth", [1, 2, 3, 5])
def test_every_chunk_is_claimed_once_whatever_the_interleaving(claims, nchunks, nth):
    """Threads claiming in any order (random schedules, and one thread that never
    comes) share out every chunk exactly once; a thread takes its own segment front
    to back, then others' chunks from their backs."""
    rng = np.random.default_rng(nchunks * 10 + nth)
    for trial in range(20):
        absent = trial % 3 == 0 and nth > 1  # thread nth - 1 never runs
        pool = nth - 1 if absent else nth
        schedule = rng.integers(0, pool, 4 * (nchunks + nth) + 8)
        schedule = np.concatenate([schedule, np.repeat(np.arange(pool), nchunks + nth)])
        got = claims(nchunks, nth, schedule)
        chunks = sorted(c for _, c in got)
        assert chunks == list(range(nchunks)), (trial, got)
        for t in range(nth):
            lo, hi = t * nchunks // nth, (t + 1) * nchunks // nth
            mine = [c for u, c in got if u == t]
            own = [c for c in mine if lo <= c < hi]
            assert own == sorted(own)  # its own segment from the front
            assert mine[: len(own)] == own  # before anything else
    # one thread alone does everything, its own segment first, then each other's from
    # the back
    got = claims(nchunks, nth, np.zeros(nchunks + nth + 1, np.int64))
    want = list(range(nchunks // nth))
    for t in range(1, nth):
        want += list(range((t + 1) * nchunks // nth - 1, t * nchunks // nth - 1, -1))
    assert [c for _, c in got] == want


ROW_KERNEL_OPS = [
    "xent", "xent_prob", "softmax", "log_softmax", "logsumexp",
    "softmax_backward", "log_softmax_backward",
]  # fmt: skip


def _run_kernel(K, op, z, y, nthreads, wide):
    """One kernel call of `op` on z (class indices y), serial (nthreads None) or
    parallel on nthreads segments; returns what it wrote."""
    sfx = "_wide" if wide and op in ("xent", "softmax", "log_softmax", "logsumexp") else ""
    if op.startswith("xent"):
        loss, g = np.empty(len(z)), np.empty_like(z)
        if op == "xent":
            name = "xent_index" + sfx
            args = (z, y, None, 0.0, -100, 0.1, 1.0 / len(z), loss, g)
        else:
            q = np.full_like(z, 1.0 / z.shape[1])
            name, args = "xent_prob", (z, q, None, 0.1, 1.0 / len(z), loss, g)
        if nthreads is None:
            return getattr(K, name + "_serial")(*args), loss, g
        return getattr(K, name)(*args, nthreads), loss, g
    if op.endswith("backward"):
        args = (z, np.cos(z), np.empty_like(z))
    else:
        args = (z, np.empty(len(z)) if op == "logsumexp" else np.empty_like(z))
    if nthreads is None:
        getattr(K, f"{op}{sfx}_serial")(*args)
    else:
        getattr(K, f"{op}{sfx}")(*args, nthreads)
    return (args[-1],)


@pytest.mark.parametrize("op", ["xent", "softmax", "log_softmax", "logsumexp"])
def test_tile_kernels_give_the_serial_bits_for_any_number_of_segments(op):
    """The parallel small-C kernels with more segments than the pool has threads (the
    later iterations find their segments taken, or half taken, by the earlier ones):
    the serial kernel's bits (4700 rows: 37 tiles, the last one partial)."""
    pytest.importorskip("numba")
    from fastsoftmax._numba import kernels as K

    rng = np.random.default_rng(11)
    z = (rng.standard_normal((4700, 10)) * 5).astype(np.float32)
    y = rng.integers(0, 10, 4700)
    y[::97] = -100
    want = _run_kernel(K, op, z, y, None, wide=False)
    for nthreads in (1, 2, 3, 5, 8):
        for a, b in zip(want, _run_kernel(K, op, z, y, nthreads, wide=False), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("op", ROW_KERNEL_OPS)
def test_row_kernels_give_the_same_bits_for_any_number_of_segments(op):
    """The parallel large-C kernels (runs of row chunks claimed, see _next_rows) on 1 to
    8 segments of the 2-thread pool: the same bits as on one (the serial twins may round
    their reassociated sums differently: not compared), and close to the serial twin.
    3001 rows of 41 classes: 7 chunks, the last one partial; 200 rows of 20000: one row
    per chunk."""
    pytest.importorskip("numba")
    from fastsoftmax._numba import kernels as K

    rng = np.random.default_rng(12)
    for shape in ((3001, 41), (200, 20000)):
        z = (rng.standard_normal(shape) * 5).astype(np.float32)
        y = rng.integers(0, shape[1], shape[0])
        y[::13] = -100
        want = _run_kernel(K, op, z, y, 1, wide=True)
        for nthreads in (2, 3, 5, 8):
            for a, b in zip(want, _run_kernel(K, op, z, y, nthreads, wide=True), strict=True):
                np.testing.assert_array_equal(a, b)
        serial = _run_kernel(K, op, z, y, None, wide=True)
        for a, b in zip(want, serial, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


_FORK_CHILD = """
import os
import numpy as np
import fastsoftmax as fs

rng = np.random.default_rng(0)
z = rng.standard_normal((300, 200)).astype(np.float32)  # the row path: parallel kernel
y = rng.integers(0, 200, 300)
zs = rng.standard_normal((4000, 10)).astype(np.float32)  # the tile path
ys = rng.integers(0, 10, 4000)
X = rng.standard_normal((600, 20)).astype(np.float32)
with fs.thread_limit(2):
    parent = fs.cross_entropy_with_grad(z, y)[1], fs.softmax(zs), fs.log_softmax(z)
    fit = fs.SoftmaxRegression(max_epochs=2, random_state=0).fit(X, ys[:600])
pid = os.fork()
if pid == 0:
    child = fs.cross_entropy_with_grad(z, y)[1], fs.softmax(zs), fs.log_softmax(z)
    again = fs.SoftmaxRegression(max_epochs=2, random_state=0).fit(X, ys[:600])
    ok = (
        np.allclose(child[0], parent[0], rtol=1e-5, atol=1e-7)
        and np.array_equal(child[1], parent[1])  # tiles: the serial bits
        and np.allclose(child[2], parent[2], rtol=1e-6, atol=1e-6)
        and np.allclose(again.coef_, fit.coef_, rtol=1e-5, atol=1e-6)
    )
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_runs_the_kernels_after_the_parent_started_its_pool():
    """Numba terminates a process forked from one whose GNU OpenMP pool had started, at
    its first parallel kernel (a DataLoader worker, a multiprocessing child); such a
    child runs every kernel on its calling thread instead, with the parent's results
    (the tile kernels' bits; the row kernels' to rounding) and a fit that works."""
    done = subprocess.run(
        [sys.executable, "-c", _FORK_CHILD], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["child", "0"], (done.stdout, done.stderr)
