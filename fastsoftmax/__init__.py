"""fastsoftmax: fused, numerically stable softmax and cross-entropy kernels.

NumPy arrays run on the Numba CPU kernels when numba is installed (else on the NumPy
reference); choose with ``backend=`` or ``with fastsoftmax.use_backend(name):``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._api import (
    cross_entropy,
    cross_entropy_with_grad,
    log_softmax,
    log_softmax_backward,
    logsumexp,
    softmax,
    softmax_backward,
)
from ._backends import BackendUnavailableError, available_backends, use_backend
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad
from ._threads import get_num_threads, set_num_threads, thread_limit
from .estimator import NotFittedError, SoftmaxRegression

try:
    __version__ = version("fastsoftmax")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "BackendUnavailableError",
    "NotFittedError",
    "SoftmaxRegression",
    "__version__",
    "available_backends",
    "cross_entropy",
    "cross_entropy_with_grad",
    "get_num_threads",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "log_softmax",
    "log_softmax_backward",
    "logsumexp",
    "set_num_threads",
    "softmax",
    "softmax_backward",
    "thread_limit",
    "use_backend",
]
