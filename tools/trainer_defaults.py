"""Test accuracy of SoftmaxRegression settings on MNIST and Fashion-MNIST: the
measurement behind the estimator's defaults (see docs/performance.md).

    python tools/trainer_defaults.py --mnist ../shared/data/mnist \
        --fashion /usr/share/datasets/fashion-mnist [--seeds 3]

Each row: a setting, its test accuracy per dataset (mean over seeds) and the fit time.
The L-BFGS row is the optimum of the same objective (scipy, on the fused gradient).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fastsoftmax import data
from fastsoftmax.estimator import SoftmaxRegression

SETTINGS = {
    "seed: constant lr 0.1, 10 epochs": {},
    "linear decay, 10 epochs": {"lr_schedule": "linear"},
    "cosine decay, 10 epochs": {"lr_schedule": "cosine"},
    "invscaling, 10 epochs": {"lr_schedule": "invscaling"},
    "average, constant, 10 epochs": {"average": True},
    "linear decay lr 0.3, 10 epochs": {"lr_schedule": "linear", "learning_rate": 0.3},
    "linear decay lr 0.3, 20 epochs": {
        "lr_schedule": "linear",
        "learning_rate": 0.3,
        "max_epochs": 20,
    },
    "linear decay, 20 epochs": {"lr_schedule": "linear", "max_epochs": 20},
    "average + linear, 10 epochs": {"lr_schedule": "linear", "average": True},
}


def lbfgs_accuracy(Xtr, ytr, Xte, yte, wd: float, maxiter: int = 500) -> float:
    """Accuracy at the optimum of mean cross-entropy + wd/2 ||W||^2 (scipy L-BFGS on
    the fused kernels' gradient)."""
    from scipy.optimize import minimize

    from fastsoftmax import linear_cross_entropy_with_grad

    X = Xtr.astype(np.float64) / 255.0
    C, d = 10, X.shape[1]

    def fun(theta):
        W = theta[: C * d].reshape(C, d)
        b = theta[C * d :]
        loss, _, gW, gb = linear_cross_entropy_with_grad(X, W, ytr, bias=b)
        return loss + 0.5 * wd * np.sum(W * W), np.concatenate([(gW + wd * W).ravel(), gb])

    res = minimize(
        fun, np.zeros(C * d + C), jac=True, method="L-BFGS-B", options={"maxiter": maxiter}
    )
    W = res.x[: C * d].reshape(C, d)
    b = res.x[C * d :]
    return float(np.mean(np.argmax(Xte / 255.0 @ W.T + b, 1) == yte))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", required=True, help="folder with the MNIST IDX files")
    parser.add_argument("--fashion", default=None, help="folder with Fashion-MNIST's")
    parser.add_argument("--seeds", type=int, default=3, help="fits per setting")
    parser.add_argument("--lbfgs", action="store_true", help="add the L-BFGS optimum")
    args = parser.parse_args()
    sets = {"MNIST": ("mnist", args.mnist)}
    if args.fashion:
        sets["Fashion"] = ("fashion-mnist", args.fashion)
    loaded = {}
    for key, (name, folder) in sets.items():
        Xtr, ytr = data.load(name, "train", data_dir=folder, download=False)
        Xte, yte = data.load(name, "test", data_dir=folder, download=False)
        loaded[key] = (Xtr, ytr, Xte, yte)
    print(f"{'setting':38s}" + "".join(f"{k:>10s}" for k in loaded) + f"{'fit s':>8s}")
    SoftmaxRegression(max_epochs=1).fit(loaded["MNIST"][0][:256], loaded["MNIST"][1][:256])
    for label, params in SETTINGS.items():
        accs, secs = [], []
        for Xtr, ytr, Xte, yte in loaded.values():
            a = []
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                model = SoftmaxRegression(random_state=seed, **params).fit(Xtr, ytr)
                secs.append(time.perf_counter() - t0)
                a.append(model.score(Xte, yte))
            accs.append(np.mean(a))
        print(
            f"{label:38s}" + "".join(f"{100 * v:9.2f}%" for v in accs) + f"{np.median(secs):8.2f}"
        )
    if args.lbfgs:
        accs = [lbfgs_accuracy(*v, wd=0.0) for v in loaded.values()]
        print(f"{'L-BFGS optimum (no decay)':38s}" + "".join(f"{100 * v:9.2f}%" for v in accs))


if __name__ == "__main__":
    main()
