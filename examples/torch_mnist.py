"""Softmax regression on MNIST in PyTorch, with fastsoftmax's loss and with PyTorch's.

Trains nn.Linear(784, 10) with optim.SGD from the same initial weights and the same
batch order, once with ``fastsoftmax.torch.cross_entropy`` and once with
``torch.nn.functional.cross_entropy``, and prints the test accuracy and the median
time of a training step (zero_grad, forward, loss, backward, SGD update; loading the
batch is not timed) of each.

    python examples/torch_mnist.py                      # MNIST from ../shared/data/mnist
    python examples/torch_mnist.py --data-dir DIR --epochs 5 --batch-size 128 --lr 0.5

Needs torch (``pip install "fastsoftmax[torch]"``); reads the MNIST IDX files with
``fastsoftmax.data.load`` (no torchvision), without downloading them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import fastsoftmax.torch as ft
from fastsoftmax import data

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def tensors(split: str, data_dir: Path):
    x, y = data.load("mnist", split, data_dir=data_dir, download=False)
    return torch.from_numpy(x).float().div_(255), torch.from_numpy(y)


def train(loss_fn, train_set, test_set, epochs: int, batch: int, lr: float, seed: int):
    """(test accuracy, median seconds per step) of one run."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(784, 10)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size=batch, shuffle=True, generator=order)
    times = []
    for _ in range(epochs):
        for xb, yb in loader:
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xb), yb).backward()
            opt.step()
            times.append(time.perf_counter() - t0)
    x_test, y_test = test_set.tensors
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return accuracy, statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    train_set = TensorDataset(*tensors("train", args.data_dir))
    test_set = TensorDataset(*tensors("test", args.data_dir))
    print(
        f"MNIST: {len(train_set)} training, {len(test_set)} test images; nn.Linear(784, 10), "
        f"SGD lr={args.lr}, batch {args.batch_size}, {args.epochs} epochs, "
        f"{torch.get_num_threads()} PyTorch threads"
    )
    results = {}
    for name, loss_fn in (("fastsoftmax", ft.cross_entropy), ("pytorch", F.cross_entropy)):
        opts = (train_set, test_set, args.epochs, args.batch_size, args.lr, args.seed)
        results[name] = accuracy, step = train(loss_fn, *opts)
        print(f"{name:12s} test accuracy {100 * accuracy:6.2f}%   step {step * 1e6:7.1f} us")
    ratio = results["pytorch"][1] / results["fastsoftmax"][1]
    print(f"fastsoftmax's step takes {1 / ratio:.2f}x the time of PyTorch's ({ratio:.2f}x speed)")


if __name__ == "__main__":
    main()
