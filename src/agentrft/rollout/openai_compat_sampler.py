"""A :class:`~agentrft.rollout.sampler.Sampler` over an OpenAI-compatible completions server (vLLM, ``agentrft serve``).

Token fidelity over HTTP: each ``generate`` call sends the prompts as token
ids (``prompt``: a list of id lists) to ``POST /v1/completions`` and reads the
sampled ids and their logprobs back, never text. The request uses vLLM's
extensions to the OpenAI body (vLLM >= 0.10.2; ``agentrft serve`` speaks the
same, :mod:`agentrft.serving.completions`):

* ``logprobs: 0`` -- each sampled token's own log-probability in ``logprobs.token_logprobs``;
* ``return_token_ids: true`` -- the sampled ids in each choice's ``token_ids`` (vLLM >= 0.10.2), and
  ``return_tokens_as_token_ids: true`` -- ``logprobs.tokens`` as ``"token_id:N"`` strings, the fallback
  read when a server (older vLLM) sends no ``token_ids``;
* ``stop_token_ids`` and ``ignore_eos: true`` -- generation ends only on the given ids (kept in the
  record), as the local sampler does; ``seed``, ``temperature``, ``top_p``, ``max_tokens``.

Logprob convention: the local sampler records ``log softmax(logits / T)``. ``agentrft serve`` returns the
same. vLLM returns the raw model's logprobs by default (``--logprobs-mode raw_logprobs``); start it with
``--logprobs-mode processed_logprobs`` so sampling at ``T != 1`` records the tempered distribution.

Seeds: a request's ``seed`` seeds each of its prompts alike (vLLM and ``agentrft serve``), so equal prompts
(an RFT group) would get equal samples; a seeded call sends each prompt as its own request, with its own seed
(:func:`row_seed`), concurrently so the server can batch them. Unseeded prompts share requests.

Each prompt's ``max_tokens`` is cut to what the context has left (``max_context - len(prompt)``), as the
local sampler does; a prompt with no room left gets an empty ``length`` completion without a request (the
episode loop reads that as a full context). Prompts with the same limit go in one request.

Failures are typed (:class:`SamplerError` and its subclasses) and raised from ``generate``; the episode
loop records them on each trajectory of the turn (a ``sampler`` error, stop reason ``infra_error``), so a
server that is down or answers garbage costs those rollouts, not the run. Nothing is retried here: a
retry would re-sample, and whether that is acceptable is the caller's decision.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import httpx
from agentrft.config import SamplerConfig  # the config section; re-exported here beside its client
from agentrft.errors import AgentRFTError
from agentrft.rollout.sampler import Completion, SamplingParams, TokenCallback

__all__ = ["OpenAICompatSampler", "SamplerConfig", "SamplerError", "SamplerResponseError", "SamplerServerError",
           "SamplerUnavailable", "api_key", "build_remote_sampler"]


class SamplerError(AgentRFTError):
    """A remote sampler call failed; the episode loop records it on the turn's trajectories."""


class SamplerUnavailable(SamplerError):
    """The server could not be reached, or did not answer in time."""


class SamplerServerError(SamplerError):
    """The server answered with an error status (its OpenAI error message is kept)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class SamplerResponseError(SamplerError):
    """The server's answer is not a completions response this sampler can read token by token."""


MAX_CONCURRENT_REQUESTS = 16
"""Requests one ``generate`` call has in flight at most (seeded rows go one per request)."""


def row_seed(seed: int, row: int) -> int:
    """Row ``row``'s seed in a seeded call: ``seed`` itself for row 0 (a one-prompt call reproduces the local
    sampler's), a well-mixed other one for each other row (``seed + row`` would repeat the next turn's)."""
    return (seed ^ (row * 0x9E3779B97F4A7C15)) & (2**63 - 1)


class OpenAICompatSampler:
    """Token ids in, token ids and logprobs out, over ``POST {url}/completions``; a :class:`Sampler`."""

    def __init__(self, url: str, model: str, *, max_context: int | None = None, api_key: str | None = None,
                 timeout_s: float = 600.0, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, transport=transport,
                                    timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)))
        self.max_context = max_context if max_context is not None else self._served_context()

    def close(self) -> None:
        self._client.close()

    def release(self) -> None:
        """Nothing is built here for the server's weights (its own caches are its business)."""

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 on_token: TokenCallback | None = None) -> list[Completion]:
        """Continue each prompt on the server; ``on_token`` sees each row's tokens once its completion arrived."""
        out: list[Completion | None] = [None] * len(prompts)
        by_limit: dict[int, list[int]] = {}
        for row, p in enumerate(prompts):
            if not p:
                raise ValueError("empty prompt")
            limit = min(params.max_new_tokens, self.max_context - len(p))
            if limit <= 0:
                out[row] = Completion([], [], "length")
            else:
                by_limit.setdefault(limit, []).append(row)
        requests: list[tuple[list[int], int, int | None]] = []  # (rows, max_tokens, seed)
        for limit, rows in by_limit.items():
            if params.seed is None:
                requests.append((rows, limit, None))
            else:  # a request's seed seeds each of its prompts alike: an RFT group's equal prompts, equal samples
                requests.extend(([r], limit, row_seed(params.seed, r)) for r in rows)

        def send(request: tuple[list[int], int, int | None]) -> list[Completion]:
            rows, limit, seed = request
            return self._request([list(prompts[r]) for r in rows], params, limit, seed)

        if len(requests) > 1:  # concurrent, so the server can batch them (vLLM batches seeded rows too)
            with ThreadPoolExecutor(min(len(requests), MAX_CONCURRENT_REQUESTS)) as pool:
                answers = list(pool.map(send, requests))
        else:
            answers = [send(r) for r in requests]
        for (rows, _, _), comps in zip(requests, answers):
            for row, comp in zip(rows, comps):
                out[row] = comp
        if on_token is not None:
            for row, comp in enumerate(out):
                for t in comp.token_ids:
                    on_token(row, t)
        return out  # type: ignore[return-value]

    # -- the wire ------------------------------------------------------------------------------

    def _request(self, prompts: list[list[int]], params: SamplingParams, max_tokens: int,
                 seed: int | None) -> list[Completion]:
        body: dict[str, Any] = {
            "model": self.model, "prompt": prompts, "max_tokens": max_tokens, "n": 1,
            "temperature": params.temperature, "top_p": params.top_p,
            "stop_token_ids": list(params.stop_token_ids), "ignore_eos": True,
            "logprobs": 0, "return_tokens_as_token_ids": True, "return_token_ids": True,
        }
        if seed is not None:
            body["seed"] = int(seed)
        data = self._post("/completions", body)
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or len(choices) != len(prompts):
            got = len(choices) if isinstance(choices, list) else "no"
            raise SamplerResponseError(f"{self.url}/completions answered {got} choices for {len(prompts)} prompts")
        ordered: list[Completion | None] = [None] * len(prompts)
        for choice in choices:
            index = choice.get("index") if isinstance(choice, dict) else None
            if not isinstance(index, int) or not 0 <= index < len(prompts) or ordered[index] is not None:
                raise SamplerResponseError(f"a choice with a missing, repeated or out-of-range index: {index!r}")
            ordered[index] = _completion(choice)
        return ordered  # type: ignore[return-value]

    def _post(self, path: str, body: dict) -> Any:
        try:
            r = self._client.post(path, json=body)
        except httpx.TimeoutException as e:
            raise SamplerUnavailable(f"{self.url}{path}: no answer in time ({type(e).__name__})") from e
        except httpx.TransportError as e:
            raise SamplerUnavailable(f"{self.url}{path}: cannot reach the server ({type(e).__name__}: {e})") from e
        if r.status_code >= 400:
            raise SamplerServerError(r.status_code, _error_message(r))
        try:
            return r.json()
        except ValueError:
            raise SamplerResponseError(f"{self.url}{path} answered {r.status_code} with a body that is not JSON: "
                                       f"{r.text[:200]!r}") from None

    def _served_context(self) -> int:
        """``max_model_len`` of the requested model in ``GET /v1/models`` (vLLM and ``agentrft serve`` list it)."""
        try:
            r = self._client.get("/models")
        except httpx.TransportError as e:
            raise SamplerUnavailable(f"{self.url}/models: cannot reach the server to read its context length "
                                     f"({type(e).__name__}: {e}); give max_context") from e
        if r.status_code >= 400:
            raise SamplerServerError(r.status_code, _error_message(r))
        try:
            cards = {c["id"]: c for c in r.json()["data"]}
            lengths = {name: c.get("max_model_len") for name, c in cards.items()}
        except (ValueError, KeyError, TypeError):
            raise SamplerResponseError(f"{self.url}/models: not a model list") from None
        if self.model not in lengths:
            raise SamplerServerError(404, f"the server does not serve {self.model!r} (it serves {sorted(lengths)})")
        if lengths[self.model] is None and cards[self.model].get("parent") in lengths:  # vLLM's adapter cards
            lengths[self.model] = lengths[cards[self.model]["parent"]]
        if not isinstance(lengths[self.model], int):
            raise SamplerResponseError(f"{self.url}/models gives no max_model_len for {self.model!r}; give max_context")
        return lengths[self.model]


def _completion(choice: dict) -> Completion:
    """One choice as a :class:`Completion`: ids from ``token_ids``, else from ``"token_id:N"`` tokens."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict) or not isinstance(lp.get("token_logprobs"), list):
        raise SamplerResponseError("a choice without logprobs.token_logprobs (does the server honour logprobs: 0?)")
    logprobs = lp["token_logprobs"]
    ids = choice.get("token_ids")
    if ids is None:  # older vLLM: no return_token_ids; the tokens are "token_id:N" strings
        try:
            ids = [int(str(t).removeprefix("token_id:")) if str(t).startswith("token_id:") else None
                   for t in lp.get("tokens") or []]
        except ValueError:
            ids = [None]
        if None in ids:
            raise SamplerResponseError("the server sent neither token_ids nor 'token_id:N' tokens (does it honour "
                                       "return_token_ids / return_tokens_as_token_ids?)")
    if not (isinstance(ids, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in ids)):
        raise SamplerResponseError("token_ids is not a list of integers")
    if len(ids) != len(logprobs) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                             for x in logprobs):
        raise SamplerResponseError(f"{len(ids)} token ids but {len(logprobs)} logprobs (or a logprob that is not a "
                                   "number)")
    finish = choice.get("finish_reason")
    if finish not in ("stop", "length"):
        raise SamplerResponseError(f"finish_reason {finish!r} (expected 'stop' or 'length')")
    return Completion(list(ids), [float(x) for x in logprobs], finish)


def _error_message(r: httpx.Response) -> str:
    """The OpenAI error JSON's message (vLLM's too), else the start of the body."""
    try:
        err = r.json().get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if r.json().get("message"):
            return str(r.json()["message"])
    except (ValueError, AttributeError):
        pass
    return r.text[:300] or r.reason_phrase


def api_key(config: SamplerConfig) -> str | None:
    """The bearer token named by ``sampler.api_key_env`` (None without one); an error when it is not set."""
    if not config.api_key_env:
        return None
    key = os.environ.get(config.api_key_env)
    if not key:
        raise AgentRFTError(f"sampler.api_key_env: the environment variable {config.api_key_env} is not set")
    return key


def build_remote_sampler(config: SamplerConfig) -> OpenAICompatSampler:
    """The sampler a non-local ``sampler:`` section asks for (the key read from ``api_key_env``)."""
    if config.backend == "local":
        raise ValueError("sampler.backend is local: build the local sampler from the policy")
    return OpenAICompatSampler(config.url, config.model, max_context=config.max_context, api_key=api_key(config),
                               timeout_s=config.timeout_s)
