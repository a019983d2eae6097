"""Weight sync: the sampler always samples the weights being trained, and each rollout says which version.

In process (``sampler.backend: local``) the sampler reads the policy's own parameters, so nothing moves:
:class:`LocalWeightSync` only records the version. Against an inference server (``openai_compat``,
``vllm``), :class:`AdapterPush` sends the run's LoRA adapter to it before the first rollout (a resumed run's
restored weights included) and after every update, vLLM's hot-swap way:

1. save: peft's ``save_pretrained`` into ``SYNC_DIR/.tmp-...``, renamed to ``SYNC_DIR/v000003-<hex>`` once
   written, so the server never reads a half-written folder and no push reuses another's folder;
2. load: ``POST {url}/load_lora_adapter`` ``{"lora_name": sampler.model, "lora_path": <absolute folder>,
   "load_inplace": true}``; every rollout requests ``model: sampler.model``, so batches from then on sample
   with it (``agentrft serve`` swaps between batches, under its weights lock);
3. prune: the folders of earlier pushes are deleted once the server has answered (it holds the tensors).

The policy version is the number of optimizer updates applied to the weights (:func:`policy_version`);
each trajectory records the version that sampled it, and RFT logs it per step.

A push that fails is retried while the failure may pass (the server cannot be reached, or answers a 5xx:
``sampler.sync_attempts`` tries, 1 s, 2 s, 4 s, ... apart); a 4xx (a path outside its ``--lora-root``, an
adapter that does not fit) is not. Then the run stops with :class:`WeightSyncError` and a
``weight_sync_failed`` event: training on while the server samples the previous weights would make every
later step silently off-policy. The last checkpoint is intact, and ``--resume`` pushes its weights first.
A server that goes down between pushes costs the rollouts it fails (infra failures, counted in the step's
metrics), not the run: the next push, after the next update, stops it if it is still down.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from agentrft.config import JobConfig, SamplerConfig
from agentrft.errors import AgentRFTError
from agentrft.jobs.store import RunStore
from agentrft.models.policy import Policy
from agentrft.rollout.openai_compat_sampler import OpenAICompatSampler, api_key, build_remote_sampler
from agentrft.rollout.sampler import Sampler

RETRY_BASE_S = 1.0
"""Wait before the second try of a push; doubled before each later one."""


class WeightSyncError(AgentRFTError):
    """The policy's weights could not be pushed to the sampling server: the run stops."""


@runtime_checkable
class WeightSync(Protocol):
    """Gets the policy's weights to the sampler."""

    version: int | None
    """The policy version the sampler samples now (None: nothing pushed yet)."""

    def push(self, policy: Policy, version: int) -> dict[str, float]:
        """Make the sampler sample ``policy``'s current weights, which are ``version``; returns metrics."""
        ...

    def close(self) -> None:
        ...


class LocalWeightSync:
    """The in-process sampler reads the policy's parameters themselves: nothing to push."""

    def __init__(self) -> None:
        self.version: int | None = None

    def push(self, policy: Policy, version: int) -> dict[str, float]:
        self.version = version
        return {}

    def close(self) -> None:
        pass


class AdapterPush:
    """Pushes the policy's LoRA adapter to an OpenAI-compatible server (``agentrft serve --enable-lora``, vLLM
    with ``--enable-lora``) under ``config.model``, the name the rollouts request."""

    def __init__(self, config: SamplerConfig, sync_dir: Path, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self.sync_dir = Path(sync_dir).resolve()
        self.version: int | None = None
        headers = {"Authorization": f"Bearer {key}"} if (key := api_key(config)) else {}
        self._client = httpx.Client(base_url=config.url.rstrip("/"), headers=headers, transport=transport,
                                    timeout=httpx.Timeout(config.timeout_s, connect=min(10.0, config.timeout_s)))
        self._pushed: list[Path] = []  # this process's folders, the loaded one last

    def push(self, policy: Policy, version: int) -> dict[str, float]:
        t0 = time.perf_counter()
        folder = self._save(policy, version)
        body = {"lora_name": self.config.model, "lora_path": str(folder), "load_inplace": True}
        for attempt in range(1, self.config.sync_attempts + 1):
            why, transient = self._load(body)
            if why is None:
                break
            if not transient or attempt == self.config.sync_attempts:
                shutil.rmtree(folder, ignore_errors=True)
                tries = f" ({attempt} tries)" if attempt > 1 else ""
                about_path = not transient and any(w in why for w in ("lora_path", "lora-root", str(folder)))
                hint = (" Is sampler.sync_dir inside the server's --lora-root, at the same path on both machines?"
                        if about_path else "")
                raise WeightSyncError(
                    f"cannot push the policy's weights (version {version}) to {self.config.url} as "
                    f"{self.config.model!r}{tries}: {why}.{hint} Stopping rather than training on while the server "
                    "samples older weights; --resume continues from the last checkpoint and pushes its weights "
                    "first.")
            time.sleep(RETRY_BASE_S * 2 ** (attempt - 1))
        for old in self._pushed:
            shutil.rmtree(old, ignore_errors=True)
        self._pushed = [folder]
        self.version = version
        return {"weight_sync_s": time.perf_counter() - t0, "weight_sync_attempts": float(attempt)}

    def _save(self, policy: Policy, version: int) -> Path:
        """The adapter in a fresh folder of ``sync_dir``, complete before it gets its name."""
        name = f"v{version:06d}-{uuid.uuid4().hex[:8]}"
        tmp, folder = self.sync_dir / f".tmp-{name}", self.sync_dir / name
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        policy.model.save_pretrained(str(tmp))  # adapter_config.json + adapter_model.safetensors
        tmp.rename(folder)
        return folder

    def _load(self, body: dict) -> tuple[str | None, bool]:
        """``(None, _)`` once the server loaded the adapter, else ``(why, whether a retry may help)``."""
        try:
            r = self._client.post("/load_lora_adapter", json=body)
        except httpx.TransportError as e:
            return f"cannot reach the server ({type(e).__name__}: {e})", True
        if r.status_code < 400:
            return None, False
        try:
            err = r.json().get("error")
            message = err.get("message") if isinstance(err, dict) else err or r.text
        except (ValueError, AttributeError):
            message = r.text
        return f"HTTP {r.status_code}: {str(message)[:500]}", r.status_code >= 500

    def close(self) -> None:
        self._client.close()


class Run(Protocol):
    """What the sync reads of a run: a :class:`~agentrft.train.context.TrainContext` is one (the context
    imports this module, so it is named here by its shape)."""

    cfg: JobConfig
    policy: Policy
    scheduler: Any
    store: RunStore
    sampler: Sampler | None
    weight_sync: WeightSync


def policy_version(ctx: Run) -> int:
    """Optimizer updates applied to the policy's weights in this run. The learning-rate scheduler steps exactly
    once per applied update (:func:`agentrft.train.optim.optimizer_step`; a skipped one steps neither) and is
    checkpointed with the weights, so the count survives a resume."""
    return int(ctx.scheduler.last_epoch)


def build_weight_sync(cfg: JobConfig, run_dir: Path) -> WeightSync:
    """The sync ``cfg.sampler`` asks for; a remote backend's adapters go to ``sampler.sync_dir`` (default
    ``RUN_DIR/sync``)."""
    if cfg.sampler.backend == "local":
        return LocalWeightSync()
    return AdapterPush(cfg.sampler, Path(cfg.sampler.sync_dir or run_dir / "sync"))


def sync_weights(ctx: Run) -> dict[str, float]:
    """Push the policy's weights if the sampler samples an older version; the push's metrics. A failed push
    is recorded (``weight_sync_failed`` event) and raised."""
    version = policy_version(ctx)
    if ctx.weight_sync.version == version:
        return {}
    try:
        return ctx.weight_sync.push(ctx.policy, version)
    except WeightSyncError as e:
        ctx.store.log_event("weight_sync_failed", str(e), {"version": version})
        raise


def start_sampling(ctx: Run) -> None:
    """Before the first rollout: push the weights the run starts from (a resumed run's restored ones) and, for
    a remote backend, connect the sampler (it reads its context length from the adapter's model card)."""
    sync_weights(ctx)
    if ctx.sampler is None:
        ctx.sampler = build_remote_sampler(ctx.cfg.sampler)
    if isinstance(ctx.weight_sync, AdapterPush):
        ctx.store.log_event("weight_sync", f"sampling from {ctx.cfg.sampler.url} as {ctx.cfg.sampler.model!r}, "
                                           f"policy version {ctx.weight_sync.version}",
                            {"url": ctx.cfg.sampler.url, "model": ctx.cfg.sampler.model,
                             "version": ctx.weight_sync.version, "sync_dir": str(ctx.weight_sync.sync_dir)})


def stop_sampling(ctx: Run) -> None:
    """Close what :func:`start_sampling` opened."""
    ctx.weight_sync.close()
    if isinstance(ctx.sampler, OpenAICompatSampler):
        ctx.sampler.close()


__all__ = ["AdapterPush", "LocalWeightSync", "WeightSync", "WeightSyncError", "build_weight_sync", "policy_version",
           "start_sampling", "stop_sampling", "sync_weights"]
