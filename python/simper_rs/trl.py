"""``simper_rs.trl``: SimPER and DIL inside TRL (``DPOTrainer`` subclasses): ``SimPERConfig``,
``SimPERTrainer``, ``DILConfig``, ``DILTrainer``, ``PackedPreferenceCollator`` and the supported
``SUPPORTED_TRL`` / ``SUPPORTED_TRANSFORMERS`` ranges.

The import path users know; the code, and what it needs of each TRL release, is
:mod:`simper_rs.integrations.trl` (this module re-exports exactly its ``__all__``).
"""

from .integrations.trl import *  # noqa: F403
from .integrations.trl import __all__  # noqa: F401
