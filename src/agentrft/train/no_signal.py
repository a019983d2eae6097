"""Steps that cannot teach the policy anything, said out loud.

A step has no learning signal when its loss cannot move the weights:

* RFT: no group's rewards differed, so no rollout reached the loss (``trained_rollouts == 0``; every group
  was all-equal or lost to infrastructure failures);
* DPO: every pair's chosen and rejected trajectories are the same tokens (the loss is ``log 2`` and the
  gradient cancels exactly);
* SFT: the batch holds no trainable (assistant) token;
* any method: the gradient came out exactly zero (e.g. RFT with ``filter_zero_variance: false`` on
  all-equal groups, whose advantages are all 0).

Such a step used to pass for a normal one: loss 0, gradient norm 0, ``skipped=0``, and a run made only of them
ended ``completed``. The runner now warns on each (``no_signal`` metric and event), counts them
(``no_signal_steps``), ends a run in which no step had a signal as ``completed_no_signal``, and stops after
``training.stop_after_no_signal_steps`` of them in a row. A non-finite step is not counted here: it is a bad
step (``skipped``, ``training.max_bad_steps``).
"""

from __future__ import annotations

from typing import Any, Callable

from agentrft.config import Method
from agentrft.train.demonstrations import same_tokens


def _rft(batch: list[Any], metrics: dict[str, Any]) -> str | None:
    if metrics.get("trained_rollouts", 1) == 0:
        return (f"no group's rewards differed ({metrics.get('zero_variance_groups', 0):.0f} group(s) with equal "
                f"rewards, {metrics.get('infra_failures', 0):.0f} infra failure(s)); nothing was trained")
    return None


def _dpo(batch: list[Any], metrics: dict[str, Any]) -> str | None:
    if batch and all(same_tokens(chosen, rejected) for chosen, rejected in batch):
        return "every pair's chosen and rejected trajectories are the same tokens"
    return None


def _sft(batch: list[Any], metrics: dict[str, Any]) -> str | None:
    if metrics.get("tokens_trained", 1) == 0:
        return "the batch holds no trainable (assistant) token"
    return None


NO_SIGNAL_CHECKS: dict[Method, Callable[[list[Any], dict[str, Any]], str | None]] = {
    Method.RFT: _rft, Method.DPO: _dpo, Method.SFT: _sft}
"""Per method: why a step's batch and metrics carry no learning signal, or None."""


def no_signal_reason(method: Method, batch: list[Any], metrics: dict[str, Any]) -> str | None:
    """Why the step (its ``batch`` and the ``metrics`` its method returned) could not teach anything; None
    when it could. A skipped (non-finite) step is a bad step, not a step without signal."""
    if metrics.get("skipped"):
        return None
    reason = NO_SIGNAL_CHECKS[method](batch, metrics)
    if reason is None and metrics.get("grad_norm") == 0.0:
        reason = "the gradient was exactly zero"
    return reason


HINTS: dict[Method, str] = {
    Method.RFT: "every group scored its rollouts the same: check the grader (a constant reward?), or make the "
                "tasks' outcomes vary (SFT first, a larger rft.group_size, another rollout.temperature)",
    Method.DPO: "the pairs do not differ: check the pair source (data.pairs_min_margin, the two oracles)",
    Method.SFT: "the demonstrations hold no assistant token to train on (weight: 0 everywhere?)",
}


def run_warning(method: Method, steps: int, no_signal_steps: int, updates: int) -> str | None:
    """The end-of-run warning: none when every step had a signal."""
    if not steps or (not no_signal_steps and updates):
        return None
    if not updates and not no_signal_steps:
        return f"no step of {steps} updated the weights: every one had a non-finite loss or gradient (skipped)"
    if not updates:
        return (f"no step of {steps} had a learning signal, so the weights were never updated ({HINTS[method]}); "
                "the no_signal metric and events in run.db say why for each step")
    return f"{no_signal_steps} of {steps} steps had no learning signal (the no_signal metric and events in run.db)"


def stop_message(method: Method, in_a_row: int, step: int, reason: str) -> str:
    """Why ``training.stop_after_no_signal_steps`` stopped the run."""
    hint = HINTS[method]
    return (f"stopped after {in_a_row} steps in a row without a learning signal "
            f"(training.stop_after_no_signal_steps: {in_a_row}); step {step}: {reason}. {hint[0].upper()}{hint[1:]}")


__all__ = ["NO_SIGNAL_CHECKS", "no_signal_reason", "run_warning", "stop_message"]
