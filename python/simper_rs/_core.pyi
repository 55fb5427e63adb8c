"""Type stubs for the Rust extension ``simper_rs._core`` (use the public API in ``simper_rs``)."""

from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

# pyo3 lists every registered name in __all__ (kept true by `python -m mypy.stubtest simper_rs._core`).
__all__ = [
    "__version__",
    "TORCH_VERSION",
    "ESTIMATORS",
    "check_dil_options",
    "check_logps_inputs",
    "token_logps_torch",
    "reduce_sequence_logps",
    "check_packed_inputs",
    "reduce_packed_logps",
    "simper_loss",
    "dil_loss",
    "preference_metrics",
    "token_stats_torch",
    "fused_token_logps_forward",
    "fused_token_logps_backward",
    "kernel_threads",
    "cpu_kernel_path",
    "linear_token_logps_forward",
    "linear_token_logps_backward",
    "linear_chunk_rows",
    "check_linear_logps_inputs",
    "linear_pair_loss_forward",
    "cuda_compile_kernel",
    "cuda_supported_archs",
    "cuda_kernel_resource_usage",
    "cuda_kernel_status",
    "cuda_backward_in_place",
    "numpy_token_logps",
    "numpy_sequence_logps",
    "numpy_simper_loss",
    "numpy_dil_loss",
]

__version__: str
TORCH_VERSION: str
ESTIMATORS: List[str]

def check_dil_options(estimator: str, beta: float) -> None: ...
def check_logps_inputs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    shift: bool = True,
    require_tokens: bool = False,
) -> None: ...
def token_logps_torch(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    shift: bool = True,
    logit_scale: Optional[float] = None,
    logit_softcap: Optional[float] = None,
) -> torch.Tensor: ...
def reduce_sequence_logps(
    token_logps: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, shift: bool = True, average: bool = True
) -> torch.Tensor: ...
def check_packed_inputs(
    labels: torch.Tensor,
    position_ids: torch.Tensor,
    ignore_index: int = -100,
    shift: bool = True,
    require_tokens: bool = False,
) -> int: ...
def reduce_packed_logps(
    token_logps: torch.Tensor,
    labels: torch.Tensor,
    position_ids: torch.Tensor,
    ignore_index: int = -100,
    shift: bool = True,
    average: bool = True,
) -> torch.Tensor: ...
def simper_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, reduction: str = "mean") -> torch.Tensor: ...
def dil_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: Optional[torch.Tensor] = None,
    ref_rejected_logps: Optional[torch.Tensor] = None,
    estimator: str = "lsif",
    beta: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor: ...
def preference_metrics(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: Optional[torch.Tensor] = None,
    ref_rejected_logps: Optional[torch.Tensor] = None,
) -> Dict[str, float]: ...
def token_stats_torch(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    shift: bool = True,
    logit_scale: Optional[float] = None,
    logit_softcap: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]: ...
def fused_token_logps_forward(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    shift: bool = True,
    with_stats: bool = False,
    cuda_stream: Optional[int] = None,
    check_values: bool = True,
    logit_scale: Optional[float] = None,
    logit_softcap: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]: ...
def fused_token_logps_backward(
    grad_logps: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int = -100,
    shift: bool = True,
    cuda_stream: Optional[int] = None,
    logit_scale: Optional[float] = None,
    logit_softcap: Optional[float] = None,
) -> torch.Tensor: ...
def kernel_threads() -> int: ...
def cpu_kernel_path() -> str: ...
def numpy_token_logps(
    logits: np.ndarray, labels: np.ndarray, ignore_index: int = -100, shift: bool = True
) -> np.ndarray: ...
def numpy_sequence_logps(
    logits: np.ndarray, labels: np.ndarray, average: bool = True, ignore_index: int = -100, shift: bool = True
) -> np.ndarray: ...
def numpy_simper_loss(
    chosen_logps: np.ndarray, rejected_logps: np.ndarray, reduction: str = "mean"
) -> Tuple[Union[float, np.ndarray], np.ndarray, np.ndarray]: ...
def numpy_dil_loss(
    chosen_logps: np.ndarray,
    rejected_logps: np.ndarray,
    ref_chosen_logps: Optional[np.ndarray] = None,
    ref_rejected_logps: Optional[np.ndarray] = None,
    estimator: str = "lsif",
    beta: float = 1.0,
    reduction: str = "mean",
) -> Tuple[Union[float, np.ndarray], np.ndarray, np.ndarray]: ...
def check_linear_logps_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    labels: torch.Tensor,
    ignore_index: int = -100,
    shift: bool = True,
    require_tokens: bool = False,
    logit_scale: Optional[float] = None,
    logit_scale_tensor: Optional[torch.Tensor] = None,
    logit_softcap: Optional[float] = None,
) -> None: ...
def linear_token_logps_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    labels: torch.Tensor,
    ignore_index: int = -100,
    shift: bool = True,
    chunk_size: Optional[int] = None,
    with_stats: bool = False,
    cuda_stream: Optional[int] = None,
    logit_scale: Optional[float] = None,
    logit_scale_tensor: Optional[torch.Tensor] = None,
    logit_softcap: Optional[float] = None,
    with_means: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]: ...
def linear_pair_loss_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    labels: torch.Tensor,
    position_ids: Optional[torch.Tensor],
    loss: str,
    estimator: str = "lsif",
    beta: float = 1.0,
    ref_chosen_logps: Optional[torch.Tensor] = None,
    ref_rejected_logps: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    shift: bool = True,
    chunk_size: Optional[int] = None,
    with_stats: bool = False,
    needs: Tuple[bool, bool, bool, bool] = (True, True, True, True),
    cuda_stream: Optional[int] = None,
    logit_scale: Optional[float] = None,
    logit_scale_tensor: Optional[torch.Tensor] = None,
    logit_softcap: Optional[float] = None,
    with_means: bool = False,
) -> Tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    Optional[torch.Tensor],
    Optional[torch.Tensor],
    Optional[torch.Tensor],
    Optional[torch.Tensor],
]: ...
def linear_token_logps_backward(
    grad_logps: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int = -100,
    shift: bool = True,
    chunk_size: Optional[int] = None,
    cuda_stream: Optional[int] = None,
    logit_scale: Optional[float] = None,
    logit_scale_tensor: Optional[torch.Tensor] = None,
    logit_softcap: Optional[float] = None,
    needs: Tuple[bool, bool, bool] = (True, True, True),
) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]: ...
def linear_chunk_rows(positions: int, hidden_size: int, vocab: int, dtype_bytes: int) -> int: ...
def cuda_compile_kernel(arch: str = "sm_90") -> bytes: ...
def cuda_supported_archs() -> List[int]: ...
def cuda_kernel_resource_usage(sm: int = 90) -> str: ...
def cuda_kernel_status(ordinal: int) -> Optional[str]: ...
def cuda_backward_in_place(
    rows: torch.Tensor,
    targets: torch.Tensor,
    grad_logps: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    cuda_stream: int,
    logit_scale: Optional[float] = None,
    logit_softcap: Optional[float] = None,
) -> None: ...
