"""``simper_rs.trl``: SimPER and DIL inside TRL (``DPOTrainer`` subclasses).

The import path users know; the code, and what it needs of each TRL release, is
:mod:`simper_rs.integrations.trl`.
"""

from .integrations.trl import (
    SUPPORTED_TRANSFORMERS,
    SUPPORTED_TRL,
    DILConfig,
    DILTrainer,
    PackedPreferenceCollator,
    SimPERConfig,
    SimPERTrainer,
)

__all__ = [
    "SimPERConfig",
    "SimPERTrainer",
    "DILConfig",
    "DILTrainer",
    "PackedPreferenceCollator",
    "SUPPORTED_TRL",
    "SUPPORTED_TRANSFORMERS",
]
