"""The thread team of the numba trainer step (``fastsoftmax._numba._team``): atomics,
the roster, the barrier, and that the step's bits do not depend on who joined.

Oracles: exact counts for the atomics, phase numbers every member must see after each
barrier, and the step run with all its threads against the same step run serially (a
prange whose iterations cannot overlap) or from several callers at once.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from numba import njit, prange  # noqa: E402

from fastsoftmax._numba import step as _numba_step  # noqa: E402
from fastsoftmax._numba._team import (  # noqa: E402
    ARRIVALS,
    CLOSED,
    COUNT,
    RESULT,
    atomic_add,
    atomic_load,
    new_control,
    team_aborted,
    team_barrier,
    team_join,
)
from fastsoftmax.reference import StepData, StepParams, StepPlan  # noqa: E402

MAX_THREADS = numba.config.NUMBA_NUM_THREADS


@njit(parallel=True)
def _count_in_parallel(ctl, iterations, per_iteration, olds):
    for i in prange(iterations):
        for j in range(per_iteration):
            olds[i * per_iteration + j] = atomic_add(ctl, 0, 1)


@njit(parallel=True)
def _join_all(size, ranks, members):
    ctl = new_control()
    for i in prange(size):
        ranks[i], members[i] = team_join(ctl, size)
    return atomic_load(ctl, ARRIVALS)


@njit(parallel=True)
def _phases(size, rounds, slots, seen_bad):
    """Each member writes its phase, waits, and checks every member's phase."""
    ctl = new_control()
    for _ in prange(size):
        r, m = team_join(ctl, size)
        if r < 0:
            continue
        for k in range(1, rounds + 1):
            slots[r * 16] = k
            team_barrier(ctl, m)
            for q in range(m):
                if slots[q * 16] != k:
                    seen_bad[r * 16] += 1
            team_barrier(ctl, m)


@pytest.fixture
def threads():
    """Restore Numba's thread count after a test changes it."""
    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)


def test_atomic_add_counts_every_increment():
    """Every add returns a distinct old value, and none is lost."""
    n_it, per = 64, 2000
    ctl = np.zeros(8, np.int64)
    olds = np.full(n_it * per, -1, np.int64)
    _count_in_parallel(ctl, n_it, per, olds)
    assert ctl[0] == n_it * per
    assert ctl[1:].sum() == 0
    np.testing.assert_array_equal(np.sort(olds), np.arange(n_it * per))


@pytest.mark.parametrize("nthreads", sorted({1, min(2, MAX_THREADS)}))
def test_team_join_gives_distinct_ranks_and_turns_late_iterations_away(nthreads, threads):
    numba.set_num_threads(nthreads)
    size = 4
    ranks = np.full(size, -9, np.int64)
    members = np.zeros(size, np.int64)
    arrivals = _join_all(size, ranks, members)
    m = members[ranks >= 0]
    assert len(m) >= 1 and (m == m[0]).all()
    m = int(m[0])
    assert sorted(ranks[ranks >= 0].tolist()) == list(range(m))
    assert (ranks[ranks < 0] == -1).all()
    assert (ranks >= 0).sum() + (ranks < 0).sum() == size
    # every iteration arrived once; the roster was closed once, by the leader
    assert arrivals == CLOSED + size
    if nthreads == 1:  # iterations in sequence: the first leads alone
        assert m == 1


@pytest.mark.parametrize("nthreads", sorted({1, min(2, MAX_THREADS)}))
def test_team_barrier_separates_phases(nthreads, threads):
    numba.set_num_threads(nthreads)
    size = nthreads
    slots = np.zeros(16 * size, np.int64)
    bad = np.zeros(16 * size, np.int64)
    _phases(size, 2000, slots, bad)
    assert bad.sum() == 0
    assert slots[0] == 2000


def _problem(n=1200, d=50, C=10, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.integers(0, C, n).astype(np.int64)
    order = rng.permutation(n)
    return X, y, order, C, d


def _run(X, y, order, C, d, nthreads, steps=9, per_call=4, nparts=None):
    W = np.zeros((C, d), np.float32)
    b = np.zeros(C, np.float32)
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    losses = np.zeros(steps)
    for s in range(0, steps, per_call):
        status = _numba_step.sgd_steps(
            StepData(X, y, 1.0), StepParams(W, b, vW, vb), StepPlan(order, 128, 0.1, 0.9, 1e-3),
            s, min(s + per_call, steps), losses, nthreads if nparts is None else nparts, nthreads,
        )  # fmt: skip
        assert status == 0
    return W, b, vW, vb, losses


@pytest.mark.parametrize("nthreads", [2, 3])
def test_step_bits_do_not_depend_on_how_many_threads_joined(nthreads, threads):
    """nthreads fixes the parts; with one Numba thread the prange's iterations run one
    after another, so the first leads a team of one and the others are turned away."""
    X, y, order, C, d = _problem()
    numba.set_num_threads(min(MAX_THREADS, nthreads))
    together = _run(X, y, order, C, d, nthreads)
    numba.set_num_threads(1)
    alone = _run(X, y, order, C, d, nthreads)
    for name, a, b in zip(("W", "b", "vW", "vb", "losses"), together, alone, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert np.isfinite(together[4]).all() and together[4][0] == pytest.approx(np.log(C))


def test_concurrent_callers_each_get_the_lone_result():
    X, y, order, C, d = _problem()
    want = _run(X, y, order, C, d, 2)
    got = {}

    def call(i):
        got[i] = _run(X, y, order, C, d, 2)

    workers = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for i in range(3):
        for a, b in zip(want, got[i], strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("nthreads", [1, 2, 3, 5])
def test_step_bits_do_not_depend_on_the_thread_count(nthreads, threads):
    """The parts are fixed by `nparts` (the pool's size in the trainer): any number of
    threads, fewer or more than the parts, gives the bits of one thread."""
    X, y, order, C, d = _problem()
    want = _run(X, y, order, C, d, 1, nparts=4)
    numba.set_num_threads(min(MAX_THREADS, nthreads))
    got = _run(X, y, order, C, d, nthreads, nparts=4)
    for name, a, b in zip(("W", "b", "vW", "vb", "losses"), want, got, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


def _run_weighted(X, y, order, C, nparts, nthreads, batch=100, per_call=4):
    """Every option of the step at once (momentum, decay, a rate per step, row weights,
    averaging from step 2), in calls of per_call steps over one epoch."""
    n, d = X.shape
    steps = -(-n // batch)
    rng = np.random.default_rng(5)
    W = (0.01 * rng.standard_normal((C, d))).astype(np.float32)
    b = np.zeros(C, np.float32)
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    Wa, ba = np.zeros_like(W), np.zeros_like(b)
    k = np.arange(steps) - 1.0
    coef = np.where(k >= 1, 1.0 / np.maximum(k, 1), 0.0)
    sw = rng.random(n) * 2.0
    lrs = np.linspace(0.5, 0.1, steps)
    losses = np.zeros(steps)
    a = 1 / 255 if X.dtype == np.uint8 else 1.0
    for s in range(0, steps, per_call):
        status = _numba_step.sgd_steps(
            StepData(X, y, a, sw), StepParams(W, b, vW, vb, (Wa, ba, coef)),
            StepPlan(order, batch, lrs, 0.9, 1e-3), s, min(s + per_call, steps), losses,
            nparts, nthreads,
        )  # fmt: skip
        assert status == 0
    return {"W": W, "b": b, "vW": vW, "vb": vb, "Wa": Wa, "ba": ba, "losses": losses}


def test_which_kernel_splits_the_classes():
    """The class split needs five classes per thread of the pool and a batch of one
    block (the thread count plays no part, so neither does it in the bits)."""
    split = _numba_step.splits_classes
    assert split(10, 2, 64) and split(10, 1, 1) and split(40, 8, 50)
    assert not split(10, 3, 64) and not split(4, 1, 64) and not split(10, 2, 65)
    assert _numba_step.step_kernel(40, 8, 64) is _numba_step.team_steps_by_class
    assert _numba_step.step_kernel(10, 4, 64) is _numba_step.team_steps


@pytest.mark.parametrize("C", [10, 13, 40])
@pytest.mark.parametrize("x_kind", ["uint8", "float32"])
@pytest.mark.parametrize("batch", [50, 100])
def test_class_split_gives_the_bits_of_the_rows_in_one_part(C, x_kind, batch, threads, monkeypatch):
    """team_steps_by_class (two parts: each thread owns about half the classes)
    against team_steps with the whole batch in one part (each kernel forced): the
    same parameter bits with 1, 2 and 3 threads, and the same objectives but for their
    last bit (LLVM fuses one product or the other of mean + wd/2 ||W||^2 into the sum,
    as the code around it goes); among thread counts the objectives too are the same
    bits.  C = 13 has three classes outside the five-class groups; C = 40 takes the
    Core kernel's row path; batches of 100 rows are two 64-row blocks (sgd_steps picks
    the class split for one-block batches only, but the kernel takes any)."""
    rng = np.random.default_rng(C)
    n, d = 998, 37
    if x_kind == "uint8":
        X = rng.integers(0, 256, (n, d)).astype(np.uint8)
    else:
        X = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.integers(0, C, n).astype(np.int64)
    order = rng.permutation(n)
    assert _numba_step.splits_classes(C, 2, batch) == (batch <= 64)
    monkeypatch.setattr(_numba_step, "splits_classes", lambda C, nparts, batch: False)
    want = _run_weighted(X, y, order, C, 1, 1, batch)
    monkeypatch.setattr(_numba_step, "splits_classes", lambda C, nparts, batch: True)
    alone = _run_weighted(X, y, order, C, 2, 1, batch)
    for nthreads in (1, 2, 3):
        got = _run_weighted(X, y, order, C, 2, nthreads, batch)
        for name in want:
            np.testing.assert_array_equal(got[name], alone[name], err_msg=f"{name}, {nthreads}")
            if name == "losses":
                np.testing.assert_allclose(got[name], want[name], rtol=4e-16, atol=0)
            else:
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name}")
    assert np.isfinite(want["losses"]).all() and np.abs(want["Wa"]).max() > 0


@pytest.mark.parametrize("batch", [64, 128])
def test_a_short_team_runs_a_few_steps_then_forms_one_new_team(batch, monkeypatch):
    """The pool's thread is busy (a task waits on an event) when sgd_steps forms its
    team: the leader alone runs `solo` steps and returns, sgd_steps forms one new team
    (still short here) which runs the rest; both kernels, and the bits of a lone run."""
    import threading as _threading

    rng = np.random.default_rng(4)
    n, d, C = 2000, 30, 10
    X = rng.integers(0, 256, (n, d)).astype(np.uint8)
    y = rng.integers(0, C, n).astype(np.int64)
    order = rng.permutation(n)
    want = _run_weighted(X, y, order, C, 2, 1, batch, per_call=100)
    teams = []
    new_control = _numba_step.new_control

    def counted_control():
        teams.append(new_control())
        return teams[-1]

    monkeypatch.setattr(_numba_step, "new_control", counted_control)
    monkeypatch.setattr(_numba_step, "SOLO_MACS", 5 * batch * d * C)  # 5 steps alone
    release = _threading.Event()
    busy = _numba_step._pool().submit(release.wait, 10.0)
    try:
        got = _run_weighted(X, y, order, C, 2, 2, batch, per_call=100)
    finally:
        release.set()
        busy.result(timeout=10.0)
    steps = -(-n // batch)
    assert [int(t[RESULT]) for t in teams] == [5, steps]  # 5 steps, then the rest
    assert all(int(t[COUNT]) == 1 for t in teams)  # both teams were the leader alone
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@njit
def _lonely_barriers(ctl, members, rounds, results):
    for k in range(rounds):
        results[k] = team_barrier(ctl, members)


def test_barrier_gives_up_when_a_member_never_arrives():
    """One caller waits for a team of two whose other member never comes: the wait
    ends after the team's timeout (not for ever), aborts the team, and every later
    wait of that team returns at once."""
    import time

    ctl = new_control(0.05)
    results = np.ones(3, np.bool_)
    t0 = time.perf_counter()
    _lonely_barriers(ctl, 2, 3, results)
    elapsed = time.perf_counter() - t0
    assert not results.any()
    assert team_aborted(ctl)
    assert 0.04 < elapsed < 5.0
    # a healthy team of one passes its barriers and is not aborted
    ok = new_control(0.05)
    _lonely_barriers(ok, 1, 3, results)
    assert results.all() and not team_aborted(ok)


def test_trainer_raises_when_the_team_is_aborted(monkeypatch):
    """The epoch loop turns an aborted team (sgd_steps' status 1) into an error, never
    a silently half-done step."""
    from fastsoftmax.train import loop

    monkeypatch.setattr(_numba_step, "sgd_steps", lambda *args, **kwargs: 1)
    X, y, _, C, d = _problem()
    state = loop.TrainState.zeros(C, d, np.float32, np.random.default_rng(0))
    with pytest.raises(RuntimeError, match="did not reach its barrier"):
        loop.train_epochs(
            state, X, y, until_epoch=1, batch_size=128, learning_rate=0.1, momentum=0.0,
            weight_decay=0.0, shuffle=False, backend="numba",
        )  # fmt: skip


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_trains_with_its_own_worker_threads():
    """A child forked after the parent trained has none of its threads: it makes its
    own team (no 60 s wait for a task no thread will run) and gets the same bits."""
    import os
    import time

    import fastsoftmax as fs

    X, y = _problem()[:2]
    want = fs.SoftmaxRegression(max_epochs=2, random_state=0).fit(X, y).coef_
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only for the same weights, in time
        t0 = time.perf_counter()
        got = fs.SoftmaxRegression(max_epochs=2, random_state=0).fit(X, y).coef_
        os._exit(0 if np.array_equal(got, want) and time.perf_counter() - t0 < 20 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
