"""What produced an eval: the record ``summary.json`` carries so two evals can be told apart.

An accuracy figure means little without the rollout it came from (greedy or
sampled, which seed, how many turns and tokens), the model (for a run
directory: which checkpoint step) and the grader (a changed grader spec is a
changed metric). :func:`eval_provenance` gathers them into one JSON-ready dict.

The grader is identified the way the runner records a run's ``grader_hash``
(:func:`grader_identity`): a spec-built :class:`~agentrft.graders.base.Grader`
by its content hash (``Grader.version``), a plain function by a hash of the
environment and the function's name. So an eval's ``grader.version`` can be
compared with the ``grader_hash`` of the run it evaluates, which is copied in
as ``model_source.grader_hash``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from agentrft.config import RolloutConfig
from agentrft.graders.base import Grader
from agentrft.jobs.store import RunStore, hash_json
from agentrft.jobs.trained import is_run_dir, split_model_spec
from agentrft.tools.environment import EnvSpec

__all__ = ["eval_provenance", "grader_identity", "model_source"]


def grader_identity(grade: Grader | Callable[..., Any] | None, env_name: str | None) -> dict[str, Any] | None:
    """``{"name", "type", "version"}`` of a grader, a bound ``Grader.grade``, or a plain grade function
    (``type: function``; its version is the hash the runner stores for it as a run's ``grader_hash``)."""
    if grade is None:
        return None
    grader = grade if isinstance(grade, Grader) else getattr(grade, "__self__", None)
    if isinstance(grader, Grader):
        return {"name": grader.name, "type": grader.type, "version": grader.version}
    name = getattr(grade, "__qualname__", type(grade).__name__)
    return {"name": name, "type": "function", "version": hash_json({"env_grader": env_name, "fn": name})}


def model_source(model_ref: str | os.PathLike[str]) -> dict[str, Any]:
    """Where ``--model`` came from: a run directory's id, base model, method and the checkpoint step it
    loads (``RUN@step=N``: N; else the latest valid one), or just the name/folder of any other model."""
    path_text, step = split_model_spec(model_ref)
    path = Path(path_text).expanduser()
    if not is_run_dir(path):
        return {"kind": "model", "name": str(model_ref),
                "path": str(path.resolve()) if path.is_dir() else None}
    if step is None:
        from agentrft.jobs.checkpoint import load_latest_checkpoint

        info = load_latest_checkpoint(path, verify_hashes=False)  # the one load_any_model picks
        step = info.step if info is not None else None
    with RunStore(path) as store:
        run = store.get_run() or {}
    return {"kind": "run", "run_dir": str(path.resolve()), "run_id": run.get("run_id"),
            "method": run.get("method"), "base_model": (run.get("resolved_config") or {}).get("model"),
            "checkpoint_step": step, "grader_hash": run.get("grader_hash"),
            "dataset_hash": run.get("dataset_hash")}


def eval_provenance(model_ref: str | os.PathLike[str], rollout: RolloutConfig,
                    grader: Grader | Callable[..., Any] | None, env: EnvSpec | str | None) -> dict[str, Any]:
    """The record of what produced an eval, for ``summary.json``: ``model`` (as given), ``model_source``
    (:func:`model_source`), ``rollout`` (every :class:`RolloutConfig` field: temperature, top_p, seed, max
    turns and tokens, ...), ``grader`` (:func:`grader_identity`), ``env``, the agentrft version and the time."""
    from agentrft import __version__

    env_name = env.name if isinstance(env, EnvSpec) else env
    return {
        "model": str(model_ref),
        "model_source": model_source(model_ref),
        "rollout": rollout.model_dump(mode="json"),
        "grader": grader_identity(grader, env_name),
        "env": env_name,
        "agentrft_version": __version__,
        "created_at": time.time(),
    }
