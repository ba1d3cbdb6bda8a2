"""The CUDA kernels alone, on a GPU (part of tools/gpu_check.sh).

    python tools/gpu_kernels.py smoke
    python tools/gpu_kernels.py sweep [--json FILE] [--quick]
    python tools/gpu_kernels.py sgd
    python tools/gpu_kernels.py onchip [--json FILE]

smoke   every entry point of kernels/*.cu, for every dtype, on each of its paths (the row
        in registers, a warp per row, a block per row, a row not 16-byte aligned),
        through the public API against the NumPy reference.  Stops at the first broken
        kernel and names it (exit 1).
sweep   times the raw kernels with CUDA events (no host work in the figure) over launch
        configurations -- threads per block, a grid capped at k blocks per SM instead of
        one team per row -- and compile-time variants (kernels/common.cuh's FS_BLOCK,
        FS_MIN_BLOCKS, FS_VEC_BATCH), at the Core shapes, beside the device's copy
        bandwidth and PyTorch's F.cross_entropy forward + backward on the same logits.
        Each variant's loss and gradient are first checked against the default launch.
        Also times the public call (fastsoftmax.cross_entropy_with_grad on CuPy arrays,
        host work and synchronisation included) against PyTorch's, by wall clock.
sgd     the CUDA trainer's MNIST-sized epoch each way it can run (kernels/sgd.cu with
        the rows read in place or staged in shared memory, and the per-step path).
onchip  the fused kernels that keep a row on chip (xent.cu's FS_XENT_ONCHIP and, on
        sm_90, FS_XENT_CLUSTER builds) against the default at the vocabulary shapes.

Bytes moved by the fused op: the logits read once and the gradient written once,
2 * N * C * itemsize; "% copy" divides the rate at that count by the device-to-device
copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time

import numpy as np

from fastsoftmax._cupy import _loader  # CuPy-free: the launch rule and kernel files

CORE_SHAPES = ((60000, 10), (512, 10), (8192, 1000), (4096, 32000), (1024, 128256))
# (name, -D options): compile-time variants of kernels/common.cuh; the first is the
# package's own build.  Measured on an H200 and dropped from the sweep (float32, fused,
# 4096 x 32000 and 1024 x 128256): 512 and 1024 threads per row (FS_BLOCK), 128
# threads, grids capped at 1-4 blocks per SM, FS_VEC_BATCH 4 and 8 at 2 or 3 blocks per
# SM: all slower than the default or within 5% of it.
VARIANTS = (
    ("default", ()),
    ("no-prefetch", ("-DFS_PREFETCH=0",)),
    ("prefetch-all", ("-DFS_PREFETCH=2",)),
)
ENTRY_FOR_COMPILE = {"xent.cu": "xent_fused_float32", "softmax.cu": "softmax_float32"}
SMOKE_C = (
    (10, "row in registers, 4 lanes"),
    (100, "row in registers, 32 lanes"),
    (700, "warp per row"),
    (5000, "block per row"),
    (50257, "block per row, unaligned rows"),
)
TOL = {"float16": (2e-3, 2e-3), "float32": (2e-5, 2e-6), "float64": (1e-11, 1e-13)}


# ----------------------------------------------------------------------------- smoke
def _close(got, want, dtype) -> str | None:
    """None when got matches want within the dtype's tolerance, else what is off."""
    rtol, atol = TOL[dtype]
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    scale = max(float(np.nanmax(np.abs(want))) if want.size else 0.0, 1e-300)
    if got.shape != want.shape:
        return f"shape {got.shape}, expected {want.shape}"
    if not np.array_equal(np.isnan(got), np.isnan(want)):
        return "NaN where the reference has none (or the reverse)"
    ok = np.isclose(got, want, rtol=rtol, atol=atol * scale, equal_nan=True)
    if ok.all():
        return None
    i = np.unravel_index(np.argmax(~ok), ok.shape)
    return f"{int((~ok).sum())} of {ok.size} off; at {i}: {got[i]!r} vs {want[i]!r}"


def smoke() -> int:
    import cupy as cp

    import fastsoftmax as fs

    _loader.CHECK_ARGS = True  # every launch's host arguments against the kernel's

    rng = np.random.default_rng(0)
    checked = 0
    for dtype in ("float32", "float64", "float16"):
        for c, path in SMOKE_C:
            n = 5 if c <= 5000 else 3
            z = (rng.standard_normal((n, c)) * 3).astype(dtype)
            y = rng.integers(0, c, n)
            y[1] = -100
            q = rng.random((n, c)).astype(dtype)
            q /= q.sum(axis=1, keepdims=True)
            zd, yd, qd = cp.asarray(z), cp.asarray(y), cp.asarray(q)
            if c == 50257:  # a view whose rows start off 16-byte boundaries
                big = cp.empty(n * c + 1, zd.dtype)
                zd = big[1:].reshape(n, c)
                zd[...] = cp.asarray(z)
            cases = _smoke_cases(fs, (zd, yd, qd), (z, y, q))
            for op, run, ref in cases:
                name = f"{op}_{dtype}"
                try:
                    got = run()
                    cp.cuda.get_current_stream().synchronize()
                except Exception as err:  # a launch failure, a trap, a missing symbol
                    print(f"gpu_kernels smoke: BROKEN {name} at C={c} ({path}): "
                          f"{type(err).__name__}: {err}", file=sys.stderr)  # fmt: skip
                    return 1
                want = ref()
                got = got if isinstance(got, tuple) else (got,)
                want = want if isinstance(want, tuple) else (want,)
                if len(got) != len(want):
                    print(f"gpu_kernels smoke: BROKEN {name} at C={c} ({path}): "
                          f"{len(got)} results, expected {len(want)}", file=sys.stderr)  # fmt: skip
                    return 1
                for part, g, w in zip(("result", "gradient"), got, want, strict=False):
                    off = _close(cp.asnumpy(g), w, dtype)
                    if off:
                        print(f"gpu_kernels smoke: BROKEN {name} at C={c} ({path}), "
                              f"{part}: {off}", file=sys.stderr)  # fmt: skip
                        return 1
                checked += 1
    print(f"gpu_kernels smoke: {checked} kernel launches match the NumPy reference "
          f"(6 ops x 3 dtypes x {len(SMOKE_C)} paths)")  # fmt: skip
    return 0


def _smoke_cases(fs, dev, host):
    """(kernel op, call on the device arrays, the NumPy reference's call)."""
    (zd, yd, qd), (z, y, q) = dev, host
    ref = {"backend": "numpy"}
    return (
        ("softmax", lambda: fs.softmax(zd), lambda: fs.softmax(z, **ref)),
        ("log_softmax", lambda: fs.log_softmax(zd), lambda: fs.log_softmax(z, **ref)),
        ("logsumexp", lambda: fs.logsumexp(zd), lambda: fs.logsumexp(z, **ref)),
        ("xent_fused", lambda: fs.cross_entropy_with_grad(zd, yd, label_smoothing=0.1),
         lambda: fs.cross_entropy_with_grad(z, y, label_smoothing=0.1, **ref)),
        ("xent_fwd", lambda: fs.cross_entropy(zd, yd, reduction="none"),
         lambda: fs.cross_entropy(z, y, reduction="none", **ref)),
        ("xent_prob", lambda: fs.cross_entropy_with_grad(zd, qd, reduction="sum"),
         lambda: fs.cross_entropy_with_grad(z, q, reduction="sum", **ref)),
    )  # fmt: skip


# ----------------------------------------------------------------------------- sweep
def _close_on_device(got, want, dtype) -> bool:
    """got == want within the dtype's tolerance (atol relative to want's largest entry),
    computed on the device (the vocabulary shapes hold 10^8 elements)."""
    import cupy as cp

    rtol, atol = TOL[dtype]
    got, want = got.astype(cp.float64), want.astype(cp.float64)
    scale = float(cp.abs(want).max())
    return bool(cp.all(cp.abs(got - want) <= atol * scale + rtol * cp.abs(want)))


def _event_ms(fn, reps: int) -> float:
    """Median device time of fn() in ms, CUDA events around each call."""
    import cupy as cp

    fn()
    fn()
    times = []
    for _ in range(reps):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def _wall_ms(fn, sync, reps: int) -> float:
    """Median wall time of fn() + sync() in ms: what a caller waits, host work included."""
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def sweep(json_path: str | None, quick: bool) -> int:
    import cupy as cp

    from fastsoftmax import machine

    props = cp.cuda.runtime.getDeviceProperties(0)
    sms = int(props["multiProcessorCount"])
    gpu = props["name"].decode()
    copy_bw = machine.gpu_copy_bandwidth()
    print(f"{gpu}: {sms} SMs, L2 {props['l2CacheSize'] / 2**20:.0f} MiB, "
          f"copy {copy_bw / 1e9:.0f} GB/s (read + write)")  # fmt: skip
    src = _loader.kernel_root()
    header = (src / "common.cuh").read_text(encoding="utf-8")
    sources = {f: header + "\n" + (src / f).read_text(encoding="utf-8")
               for f in ("xent.cu", "softmax.cu")}  # fmt: skip
    records = []

    def record(**r):
        records.append(r)
        frac = r.get("fraction_of_copy")
        print(f"{r['what']:58s} {r['ms']:9.4f} ms" + (f" {100 * frac:5.0f}% copy" if frac else ""))

    try:
        import torch
    except ImportError:
        torch = None
    shapes = CORE_SHAPES if not quick else ((60000, 10), (4096, 32000))
    variants = VARIANTS if not quick else VARIANTS[:1]
    modules = {}
    for vname, defines in variants:
        t0 = time.perf_counter()
        for file, text in sources.items():
            if vname != "default":  # float32 entry points only: a third of the compile
                text = "\n".join(
                    line for line in text.splitlines()
                    if not re.match(r"FS_\w+_ENTRIES\((d|fs::half_t)", line)
                )  # fmt: skip
            modules[vname, file] = cp.RawModule(code=text, options=("-std=c++17", *defines))
            modules[vname, file].get_function(ENTRY_FOR_COMPILE[file])
        print(f"compiled xent.cu and softmax.cu ({vname}) in {time.perf_counter() - t0:.1f} s")
    for dtype in ("float32", "float16"):
        for n, c in shapes:
            _sweep_case(dtype, n, c, modules, variants, copy_bw, record, torch)
            cp.get_default_memory_pool().free_all_blocks()
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"gpu": gpu, "sms": sms, "copy_bandwidth": copy_bw, "results": records},
                      f, indent=1)  # fmt: skip
    return 0


def _sweep_case(dtype, n, c, modules, variants, copy_bw, record, torch) -> None:
    """Every launch configuration of the fused kernel at one shape, the forward kernel,
    the public call and PyTorch's."""
    import cupy as cp

    import fastsoftmax as fs
    from fastsoftmax._cupy import api as cupy_api

    rng = np.random.default_rng(0)
    z = cp.asarray((rng.standard_normal((n, c), dtype=np.float32) * 3).astype(dtype))
    y = cp.asarray(rng.integers(0, c, n))
    loss, g = cp.empty(n, cp.float64), cp.empty_like(z)
    err = cp.full(1, n, cp.int64)
    nbytes = 2 * z.nbytes
    reps = 50 if z.nbytes > 1e8 else 200
    base = {}

    grid = _loader.grid_for(n, c)  # kernels/README.md's launch rule, 256 threads

    def launch(mod, fwd=False):
        k = mod.get_function(f"{'xent_fwd' if fwd else 'xent_fused'}_{dtype}")
        args = (z, y, np.uint64(0), np.float64(c), np.int64(-100), np.float64(0.0),
                np.float64(1.0 / n), np.uint64(0), loss) + (() if fwd else (g,)) + (
                err, np.int64(n), np.int64(c))  # fmt: skip
        return lambda: k(grid, (_loader.THREADS,), args)

    names = [v for v, _ in variants] if c > _loader.REG_C_MAX and dtype == "float32" else []
    for vname in names or ["default"]:
        for fwd in (False, True):
            op = "xent_fwd" if fwd else "xent_fused"
            fn = launch(modules[vname, "xent.cu"], fwd)
            fn()
            out = loss if fwd else g
            same = True
            if vname == "default":
                base[fwd] = (loss.copy(), out.copy())
            else:
                want_loss, want = base[fwd]
                ok = _close_on_device(loss, want_loss, dtype) and _close_on_device(out, want, dtype)
                if not ok:
                    print(f"WRONG {vname} {op}: differs from the default build")
                    continue
                same = bool(cp.array_equal(loss, want_loss) and cp.array_equal(out, want))
            ms = _event_ms(fn, reps)
            moved = z.nbytes if fwd else nbytes
            rate = moved / ms / 1e6
            record(what=f"{op} {dtype} {n}x{c} {vname}{'' if same else ' (other bits)'}",
                   op=op, dtype=dtype, n=n, c=c, variant=vname, same_bits=same, ms=ms,
                   GBps=rate, fraction_of_copy=rate / (copy_bw / 1e9))  # fmt: skip
        kernel = modules[vname, "softmax.cu"].get_function(f"softmax_{dtype}")
        args = (z, g, np.int64(n), np.int64(c))
        fn = lambda kernel=kernel, args=args: kernel(grid, (_loader.THREADS,), args)  # noqa: E731
        fn()
        if vname == "default":
            base["softmax"] = g.copy()
            same = True
        elif not _close_on_device(g, base["softmax"], dtype):
            print(f"WRONG {vname} softmax: differs from the default build")
            continue
        else:
            same = bool(cp.array_equal(g, base["softmax"]))
        ms = _event_ms(fn, reps)
        rate = nbytes / ms / 1e6
        record(what=f"softmax {dtype} {n}x{c} {vname}{'' if same else ' (other bits)'}",
               op="softmax", dtype=dtype, n=n, c=c, variant=vname, same_bits=same, ms=ms,
               GBps=rate, fraction_of_copy=rate / (copy_bw / 1e9))  # fmt: skip
    sync = cp.cuda.get_current_stream().synchronize
    calls = {}
    for lean in (False, True):  # the denominator read on the host, or the lean path
        cupy_api.LEAN_INDEX_PATH = lean
        tag = " lean" if lean else ""
        api = _wall_ms(lambda: fs.cross_entropy_with_grad(z, y), sync, reps)
        record(what=f"public call{tag} {dtype} {n}x{c} (wall)", op="api" + tag, dtype=dtype,
               n=n, c=c, ms=api)  # fmt: skip
        api_out = _wall_ms(lambda: fs.cross_entropy_with_grad(z, y, out=g), sync, reps)
        record(what=f"public call{tag} out= {dtype} {n}x{c} (wall)", op="api-out" + tag,
               dtype=dtype, n=n, c=c, ms=api_out)  # fmt: skip
        calls[lean] = api
    cupy_api.LEAN_INDEX_PATH = False
    if torch is not None:
        import torch.nn.functional as F

        zt = torch.from_dlpack(z).detach()
        yt = torch.from_dlpack(y)

        def torch_step():
            zz = zt.requires_grad_(True)
            F.cross_entropy(zz, yt).backward()
            zz.grad = None

        tms = _wall_ms(torch_step, torch.cuda.synchronize, reps)
        record(what=f"torch F.cross_entropy fwd+bwd {dtype} {n}x{c} (wall)",
               op="torch", dtype=dtype, n=n, c=c, ms=tms, ratio_public=tms / calls[False],
               ratio_public_lean=tms / calls[True])  # fmt: skip
        print(f"{'':58s} PyTorch / ours: {tms / calls[False]:.2f}x "
              f"(lean path {tms / calls[True]:.2f}x)")  # fmt: skip


def sgd_epochs() -> int:
    """One MNIST-sized epoch (60000 x 784, batch 64) of the CUDA trainer step, each way
    kernels/sgd.cu can run it (the rows read where they are, or staged in shared memory
    first) and the per-step path, median of 5 epochs each; the staged run must give the
    default's bits."""
    import cupy as cp

    from fastsoftmax import bench_cases
    from fastsoftmax._cupy import _sgd_plan, step
    from fastsoftmax.reference import StepData, StepParams, StepPlan

    pixels, x, y = bench_cases.mnist_shaped(60000, 784, 10)
    n, batch = len(y), 64
    steps = -(-n // batch)
    plan = StepPlan(np.random.default_rng(0).permutation(n), batch, 0.1)
    results = {}
    for xname, data, a in (("uint8", pixels, 1.0 / 255.0), ("float32", x, 1.0)):
        dev = StepData(cp.asarray(data), cp.asarray(y), a)
        for way, stage, max_c in (("rows in place", False, 128), ("rows staged", True, 128),
                                  ("per step", False, 0)):  # fmt: skip
            _sgd_plan.STAGE_ROWS, _sgd_plan.SGD_MAX_C = stage, max_c
            times = []
            for _ in range(1 if max_c == 0 else 5):
                W, b = cp.zeros((10, 784), cp.float32), cp.zeros(10, cp.float32)
                params = StepParams(W, b, cp.zeros_like(W), cp.zeros_like(b))
                losses = np.zeros(steps)
                cp.cuda.get_current_stream().synchronize()
                t0 = time.perf_counter()
                step.sgd_steps(dev, params, plan, 0, steps, losses)
                times.append(time.perf_counter() - t0)
            results[xname, way] = (cp.asnumpy(W), losses)
            print(f"sgd epoch {xname} {way}: {1e3 * statistics.median(times):8.2f} ms")
        same = all(
            np.array_equal(p, q)
            for p, q in zip(results[xname, "rows in place"], results[xname, "rows staged"],
                            strict=True)
        )  # fmt: skip
        print(f"sgd epoch {xname}: staged rows give the same bits: {same}")
    _sgd_plan.STAGE_ROWS, _sgd_plan.SGD_MAX_C = False, 128
    return 0


ONCHIP_SHAPES = ((4096, 32000), (1024, 128256))


def onchip(json_path: str | None) -> int:
    """The kernels that keep a row on chip (kernels/xent.cu, built here only):
    xent_kernel3 (FS_XENT_ONCHIP, a block per row in shared memory, where a row fits)
    and xent_kernel4 (FS_XENT_CLUSTER, sm_90: a cluster of blocks per row, each with its
    slice), each checked against the default build's result, then timed beside it.  A
    process of its own: a kernel that traps takes the CUDA context with it."""
    import cupy as cp

    from fastsoftmax import machine

    props = cp.cuda.runtime.getDeviceProperties(0)
    sms = int(props["multiProcessorCount"])
    optin, per_sm = int(props["sharedMemPerBlockOptin"]), int(props["sharedMemPerMultiprocessor"])
    copy_bw = machine.gpu_copy_bandwidth()
    src = _loader.kernel_root()
    text = (src / "common.cuh").read_text(encoding="utf-8") + "\n" + (
        src / "xent.cu").read_text(encoding="utf-8")  # fmt: skip
    default = cp.RawModule(code=text, options=("-std=c++17",))
    defines = ["-DFS_XENT_ONCHIP=1", "-DFS_BLOCK=512", "-DFS_MIN_BLOCKS=1"]
    if int(props["major"]) >= 9:
        defines.append("-DFS_XENT_CLUSTER=1")
    kernels_only = "\n".join(  # the package's own entries are not needed here
        line for line in text.splitlines() if not line.startswith("FS_XENT_ENTRIES(")
    )
    staged = cp.RawModule(code=kernels_only, options=("-std=c++17", *defines))
    records = []
    device = {"sms": sms, "optin": optin, "per_sm": per_sm,
              "cluster": "-DFS_XENT_CLUSTER=1" in defines}  # fmt: skip
    for dtype in ("float32", "float16"):
        for n, c in ONCHIP_SHAPES:
            _onchip_case(dtype, n, c, (default, staged), device, copy_bw, records)
            cp.get_default_memory_pool().free_all_blocks()
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"copy_bandwidth": copy_bw, "results": records}, f, indent=1)
    return 0


def _onchip_case(dtype, n, c, modules, device, copy_bw, records) -> None:
    import cupy as cp

    default, staged = modules
    rng = np.random.default_rng(0)
    z = cp.asarray((rng.standard_normal((n, c), dtype=np.float32) * 3).astype(dtype))
    y = cp.asarray(rng.integers(0, c, n))
    y[1] = -100  # an ignored row
    loss, g = cp.empty(n, cp.float64), cp.empty_like(z)
    err = cp.full(1, n, cp.int64)
    args = (z, y, np.uint64(0), np.float64(c), np.int64(-100), np.float64(0.0),
            np.float64(1.0 / n), np.uint64(0), loss, g, err, np.int64(n), np.int64(c))  # fmt: skip

    def report(name, ms, grid):
        rate = 2 * z.nbytes / ms / 1e6
        frac = rate / (copy_bw / 1e9)
        records.append(dict(kernel=name, dtype=dtype, n=n, c=c, ms=ms, GBps=rate, grid=grid,
                            fraction_of_copy=frac))  # fmt: skip
        print(f"xent_fused {dtype} {n}x{c} {name:10s} {ms:8.4f} ms {100 * frac:4.0f}% copy "
              f"(grid {grid})")  # fmt: skip

    base = default.get_function(f"xent_fused_{dtype}")
    grid = _loader.grid_for(n, c)
    report("default", _event_ms(lambda: base(grid, (_loader.THREADS,), args), 50), grid[0])
    want_loss, want = loss.copy(), g.copy()
    item = z.dtype.itemsize
    vecs = -(-c * item // 16) + 1
    for name, smem, ctas in (("onchip", (c + 16 // item) * item, 1),
                             ("cluster", -(-vecs // 4) * 16 + 16, 4)):  # fmt: skip
        if smem > device["optin"] or (name == "cluster" and not device["cluster"]):
            print(f"xent_fused {dtype} {n}x{c} {name}: not run ({smem} bytes of shared memory)")
            continue
        kernel = staged.get_function(f"xent_fused_{name}_{dtype}")
        kernel.max_dynamic_shared_size_bytes = smem
        resident = device["sms"] * max(1, device["per_sm"] // (smem + 2048)) // ctas
        grid_k = ctas * max(1, min(n, resident))
        loss.fill(np.nan)
        err.fill(n)

        def fn(kernel=kernel, grid_k=grid_k, smem=smem):
            kernel((grid_k,), (512,), args, shared_mem=smem)

        fn()
        ok = _close_on_device(loss, want_loss, dtype) and _close_on_device(g, want, dtype)
        if not ok or int(err.get()[0]) != n:
            print(f"WRONG xent_fused {dtype} {n}x{c} {name}: differs from the default")
            continue
        report(name, _event_ms(fn, 50), grid_k)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("smoke", "sweep", "sgd", "onchip"))
    parser.add_argument("--json", help="sweep, onchip: write the records here")
    parser.add_argument("--quick", action="store_true", help="sweep: two shapes, default build")
    args = parser.parse_args(argv)
    if args.what == "sgd":
        return sgd_epochs()
    if args.what == "onchip":
        return onchip(args.json)
    return smoke() if args.what == "smoke" else sweep(args.json, args.quick)


if __name__ == "__main__":
    sys.exit(main())
