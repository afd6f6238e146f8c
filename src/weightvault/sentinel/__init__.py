"""The sentinel: detection of weight theft and extraction in the audit log (docs/sentinel.md).

Pure core: :mod:`.stream` (the interchange format), :mod:`.rules` (the rule language),
:mod:`.context` (per-entity state), :mod:`.baselines`, :mod:`.extraction`, :mod:`.learned`,
:mod:`.engine` (one pass over events), :mod:`.simulate` and :mod:`.evaluate`. On top:
:mod:`.live`, which follows a verified log and contains through the broker's API.
"""

from weightvault.sentinel.alerts import Alert
from weightvault.sentinel.engine import Sentinel, SentinelConfig, default_config

__all__ = ["Alert", "Sentinel", "SentinelConfig", "default_config"]
