"""Type stubs for the Rust extension ``simper_rs._core`` (use the public API in ``simper_rs``)."""
from typing import Dict, Optional

import torch

__version__: str

def check_logps_inputs(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, shift: bool = True, require_tokens: bool = False
) -> None: ...
def token_logps_torch(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, shift: bool = True) -> torch.Tensor: ...
def reduce_sequence_logps(
    token_logps: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, shift: bool = True, average: bool = True
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
