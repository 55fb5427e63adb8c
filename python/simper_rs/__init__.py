"""simper_rs: SimPER and DIL preference losses with a fused log-prob reduction, in Rust.

Quick start::

    import simper_rs
    out = simper_rs.SimPERLoss()(model(input_ids).logits, labels)   # [chosen; rejected] batch
    out.loss.backward(); print(out.metrics)
"""

import torch as _torch  # libtorch must be loaded before the extension that links it

from . import _torch_version

try:
    from . import _core
except ImportError as _error:  # e.g. undefined libtorch symbols: built for another torch
    raise _torch_version.load_failure(_error, _torch.__version__) from _error

# The extension records the torch it was compiled against; refuse any other release.
_torch_version.check_torch_version(_torch.__version__, built_for=_core.TORCH_VERSION)
from . import numpy  # noqa: E402  (simper_rs.numpy: the same kernels on numpy arrays)
from .cuda_check import CudaCheckResult, cuda_self_check  # noqa: E402
from .losses import (  # noqa: E402
    ESTIMATORS,
    DILLoss,
    PreferenceLossOutput,
    SimPERLoss,
    dil_loss,
    simper_loss,
)
from .ops import (  # noqa: E402
    BACKENDS,
    LogitTransform,
    linear_sequence_logps,
    linear_sequence_logps_with_stats,
    linear_token_logps,
    sequence_logps,
    sequence_logps_with_stats,
    token_logps,
)

__version__ = _core.__version__

__all__ = [
    "token_logps",
    "sequence_logps",
    "sequence_logps_with_stats",
    "linear_token_logps",
    "linear_sequence_logps",
    "linear_sequence_logps_with_stats",
    "BACKENDS",
    "LogitTransform",
    "simper_loss",
    "dil_loss",
    "SimPERLoss",
    "DILLoss",
    "PreferenceLossOutput",
    "ESTIMATORS",
    "numpy",
    "cuda_self_check",
    "CudaCheckResult",
    "__version__",
]
