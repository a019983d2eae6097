"""Governance: what sits on top of training and serving -- first of all, measuring before training.

:mod:`~agentrft.governance.optimize` (``agentrft optimize``) evaluates variants
of the system prompt, the tool descriptions, the tool-output truncation, the
rollout budgets and guardrails on the validation tasks, picks the best with
paired statistics, writes it as a training config and says whether what still
fails looks like something prompting fixes or something that needs weights.
:mod:`~agentrft.governance.variants` applies a variant around an environment
without touching it; :mod:`~agentrft.governance.proposer` asks a chat model for
new variants from failed rollouts; :mod:`~agentrft.governance.report` holds the
paired statistics, the failure kinds and the verdict. See docs/optimize.md.
"""

from __future__ import annotations

from agentrft.governance.optimize import OptimizeConfig, evaluate_variant, load_best, load_optimize_config, \
    measurement_tasks, run_optimize
from agentrft.governance.proposer import ProposerConfig
from agentrft.governance.report import FAILURE_REMEDIES, classify_failure, paired_reward_difference
from agentrft.governance.variants import Variant, apply_variant

__all__ = ["FAILURE_REMEDIES", "OptimizeConfig", "ProposerConfig", "Variant", "apply_variant", "classify_failure",
           "evaluate_variant", "load_best", "load_optimize_config", "measurement_tasks", "paired_reward_difference",
           "run_optimize"]
