"""Bearer API keys: made once, shown once, stored as SHA-256 hashes only.

Keys come from two places: ``agentrft server-key create --home HOME`` (the key is printed once; its hash
goes into ``platform.db``, where a running server finds it on the key's first use), and the ``AGENTRFT_API_KEYS`` environment variable of the server process
(comma-separated, never written anywhere). A server with no key at all serves only 127.0.0.1/::1
(:func:`check_bind`); any other address without a key is refused at start.

Every route but ``/health`` and the dashboard's static page needs ``Authorization: Bearer <key>``; a
missing or wrong key is a 401 in OpenAI's error JSON, checked before the route reads its body, so it
changes nothing. Keys are compared by hash with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets

from agentrft.errors import ConfigError
from agentrft.platform.db import PlatformDB
from agentrft.serving.protocol import APIError

ENV_VAR = "AGENTRFT_API_KEYS"
PUBLIC_PATHS = ("/health", "/dashboard", "/dashboard/", "/")
PUBLIC_PREFIXES = ("/dashboard/static/",)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(db: PlatformDB, name: str) -> str:
    """A new key: its hash is stored under ``name``; the key itself is returned once and kept nowhere."""
    key = "sk-agentrft-" + secrets.token_urlsafe(32)
    db.add_key_hash(hash_key(key), name)
    return key


class KeyRing:
    """The hashes of the keys a server accepts."""

    def __init__(self, db: PlatformDB, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._db = db
        self._env_names = {hash_key(k.strip()): f"env-{hash_key(k.strip())[:8]}"
                           for k in env.get(ENV_VAR, "").split(",") if k.strip()}
        self._load()

    def _load(self) -> None:
        self._names = {**self._env_names, **self._db.key_hashes()}
        self._hashes = set(self._names)

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def check(self, authorization: str | None) -> str:
        """The name of the key in ``authorization`` (``Bearer <key>``); a 401 unless it is a known key. Without
        keys everything passes, as ``local``."""
        if not self._hashes:
            return "local"
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise APIError(401, "You didn't provide an API key. Provide it in the Authorization header as "
                                "'Bearer YOUR_KEY'.", code="missing_api_key")
        digest = hash_key(key.strip())
        for attempt in range(2):  # a miss re-reads platform.db: a key created while the server runs works at once
            for known in self._hashes:
                if hmac.compare_digest(digest, known):
                    return self._names[known]
            if attempt == 0:
                self._load()
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def check_bind(host: str, keys: KeyRing | None) -> None:
    """Refuse to serve a non-loopback address without API keys (``None``: a server that has none)."""
    if keys is not None and keys.enabled:
        return
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"refusing to serve {host} without an API key: anyone who reaches it could train and run "
                          f"code on this machine. Create one with `agentrft server-key create --home HOME` or set "
                          f"{ENV_VAR}, or bind 127.0.0.1")
