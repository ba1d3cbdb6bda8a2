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
    "defaults (linear decay lr 0.5, 20 epochs)": {},
    "constant lr 0.1, 10 epochs (the seed's)": {
        "lr_schedule": "constant",
        "learning_rate": 0.1,
        "max_epochs": 10,
    },
    "linear decay lr 0.1, 10 epochs": {"learning_rate": 0.1, "max_epochs": 10},
    "cosine decay lr 0.5, 20 epochs": {"lr_schedule": "cosine"},
    "invscaling lr 0.5, 20 epochs": {"lr_schedule": "invscaling"},
    "constant lr 0.1 averaged, 20 epochs": {
        "lr_schedule": "constant",
        "learning_rate": 0.1,
        "average": True,
    },
    "linear decay lr 0.3, 20 epochs": {"learning_rate": 0.3},
    "linear decay lr 1.0, 20 epochs": {"learning_rate": 1.0},
    "linear decay lr 0.5, 40 epochs": {"max_epochs": 40},
    "linear decay lr 0.5, 20 epochs, batch 128": {"batch_size": 128},
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
    parser.add_argument(
        "--sklearn", action="store_true", help="add scikit-learn's LogisticRegression()"
    )
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
    if args.sklearn:
        from sklearn.linear_model import LogisticRegression

        accs, secs = [], []
        for Xtr, ytr, Xte, yte in loaded.values():
            t0 = time.perf_counter()
            model = LogisticRegression().fit(Xtr / 255.0, ytr)
            secs.append(time.perf_counter() - t0)
            accs.append(model.score(Xte / 255.0, yte))
        print(
            f"{'scikit-learn LogisticRegression()':38s}"
            + "".join(f"{100 * v:9.2f}%" for v in accs)
            + f"{np.median(secs):8.2f}"
        )


if __name__ == "__main__":
    main()
