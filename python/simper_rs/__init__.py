"""simper_rs: SimPER and DIL preference losses with a fused log-prob reduction, in Rust.

Quick start::

    import simper_rs
    out = simper_rs.SimPERLoss()(model(input_ids).logits, labels)   # [chosen; rejected] batch
    out.loss.backward(); print(out.metrics)
"""
import torch as _torch  # libtorch must be loaded before the extension that links it

from ._torch_version import check_torch_version as _check_torch_version

_check_torch_version(_torch.__version__)

from . import _core  # noqa: E402
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
    linear_sequence_logps,
    linear_sequence_logps_with_stats,
    linear_token_logps,
    sequence_logps,
    sequence_logps_with_stats,
    token_logps,
)
from . import numpy  # noqa: E402  (simper_rs.numpy: the same kernels on numpy arrays)

__version__ = _core.__version__

__all__ = [
    "token_logps",
    "sequence_logps",
    "sequence_logps_with_stats",
    "linear_token_logps",
    "linear_sequence_logps",
    "linear_sequence_logps_with_stats",
    "BACKENDS",
    "simper_loss",
    "dil_loss",
    "SimPERLoss",
    "DILLoss",
    "PreferenceLossOutput",
    "ESTIMATORS",
    "__version__",
]
