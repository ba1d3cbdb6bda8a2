"""fastsoftmax: fused, numerically stable softmax and cross-entropy kernels.

NumPy arrays run on the Numba CPU kernels when numba is installed (else on the NumPy
reference); choose with ``backend=`` or ``with fastsoftmax.use_backend(name):``.
"""

from __future__ import annotations

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
from ._version import __version__
from .estimator import NotFittedError, SoftmaxRegression, load_model, save_model

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
    "load_model",
    "log_softmax",
    "log_softmax_backward",
    "logsumexp",
    "save_model",
    "set_num_threads",
    "softmax",
    "softmax_backward",
    "thread_limit",
    "use_backend",
]
