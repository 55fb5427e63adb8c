"""``simper_rs.trainer``: the HuggingFace ``Trainer`` for SimPER and DIL and its loss step.

The import path users know; the code is :mod:`simper_rs.integrations.trainer`.
"""

from .integrations.trainer import PreferenceTrainer, make_loss, preference_loss, resolve_aux_loss_coef, router_loss

__all__ = ["PreferenceTrainer", "preference_loss", "make_loss", "resolve_aux_loss_coef", "router_loss"]
