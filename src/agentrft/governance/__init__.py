"""Governance: what sits on top of training and serving -- measuring before training, and governing what ships.

:mod:`~agentrft.governance.optimize` (``agentrft optimize``) evaluates variants
of the system prompt, the tool descriptions, the tool-output truncation, the
rollout budgets and guardrails on the validation tasks, picks the best with
paired statistics, writes it as a training config and says whether what still
fails looks like something prompting fixes or something that needs weights.
:mod:`~agentrft.governance.variants` applies a variant around an environment
without touching it; :mod:`~agentrft.governance.proposer` asks a chat model for
new variants from failed rollouts; :mod:`~agentrft.governance.report` holds the
paired statistics, the failure kinds and the verdict. See docs/optimize.md.

After the weights: :mod:`~agentrft.governance.promote` (``agentrft promote RUN --as NAME``) runs a gate
(:mod:`~agentrft.governance.gate`) against the model an alias serves and moves the alias only if every
threshold holds; :mod:`~agentrft.governance.registry` keeps each alias's history (``agentrft rollback NAME``);
:mod:`~agentrft.governance.lineage` prints a run's chain and writes its model card from the hash-chained audit
log (:mod:`agentrft.jobs.audit`). Privacy (:mod:`agentrft.privacy`) and the live monitors
(:mod:`agentrft.train.monitors`) sit lower, where runs write and train. See docs/governance.md.
"""

from __future__ import annotations

from agentrft.governance.optimize import OptimizeConfig, evaluate_variant, load_best, load_optimize_config, \
    measurement_tasks, run_optimize
from agentrft.governance.gate import GateSpec, load_gate_spec
from agentrft.governance.lineage import build_lineage, write_model_card
from agentrft.governance.promote import GateReport, promote
from agentrft.governance.proposer import ProposerConfig
from agentrft.governance.registry import ModelRegistry
from agentrft.governance.report import FAILURE_REMEDIES, classify_failure, paired_reward_difference
from agentrft.governance.variants import Variant, apply_variant

__all__ = ["FAILURE_REMEDIES", "GateReport", "GateSpec", "ModelRegistry", "OptimizeConfig", "ProposerConfig", "Variant",
           "apply_variant", "build_lineage", "classify_failure", "evaluate_variant", "load_best", "load_gate_spec",
           "load_optimize_config", "measurement_tasks", "paired_reward_difference", "promote", "run_optimize",
           "write_model_card"]
