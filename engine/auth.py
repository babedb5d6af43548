"""API keys: who may write events, read the status page and metrics, and (optionally) ask for
recommendations.

A key is presented as `Authorization: Bearer KEY` or `X-API-Key: KEY`. Both sides are hashed with
SHA-256 and the digests compared with `hmac.compare_digest` against every configured key, without
stopping at a match: the time taken depends on neither the presented key's length nor on how much
of it matches, nor on which configured key (if any) it equals. Keys are never logged or echoed;
a refusal says "missing or unknown API key" and nothing more about what was sent.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from engine.errors import Unauthorized
from engine.settings import SecuritySettings

REFUSAL = "missing or unknown API key; send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


def _digest(key: str) -> bytes:
    # surrogateescape: any header bytes hash without raising (and then simply match nothing).
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class KeyRing:
    """A set of API keys, held only as SHA-256 digests, each with its id (its position in the
    Guard's list of every key, which rate limits count by). Empty: admits every request (the
    endpoint is open)."""

    __slots__ = ("_digests", "_ids")

    def __init__(self, keys: Iterable[str], ids: Iterable[int] | None = None) -> None:
        self._digests = tuple(_digest(k) for k in keys)
        self._ids = tuple(ids) if ids is not None else tuple(range(len(self._digests)))
        if len(self._ids) != len(self._digests):
            raise ValueError("one id per key")

    @property
    def open(self) -> bool:
        return not self._digests

    def match(self, presented: str | None) -> int | None:
        """The id of the key `presented` is, or None. Compares against every key, each in
        constant time, whatever `presented` is, including missing."""
        candidate = _digest(presented or "")
        found: int | None = None
        for digest, key_id in zip(self._digests, self._ids):
            if hmac.compare_digest(candidate, digest) and presented:
                found = key_id
        return found

    def admits(self, presented: str | None) -> bool:
        """Whether `presented` is one of the keys (always True for an open ring)."""
        if not self._digests:
            return True
        return self.match(presented) is not None


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key a request carries: `Authorization: Bearer KEY`, else `X-API-Key: KEY`; None when
    neither is there. Header names are lower-case bytes (the ASGI scope)."""
    bearer: str | None = None
    api_key: str | None = None
    for name, value in headers:
        if name == b"authorization" and bearer is None:
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
        elif name == b"x-api-key" and api_key is None:
            api_key = value.decode("latin-1").strip() or None
    return bearer if bearer is not None else api_key


class Guard:
    """The access rules of one worker, built once from the settings: `writes` (events, /status),
    `metrics` (open unless protect_metrics) and `reads` (recommendations: open unless read_keys
    are set; then read_keys and api_keys both admit). `keys` lists every distinct key once
    (api_keys, then read_keys): a key's id is its position there, in every ring."""

    __slots__ = ("writes", "metrics", "reads", "keys")

    def __init__(self, security: SecuritySettings) -> None:
        self.keys = list(dict.fromkeys([*security.api_keys, *security.read_keys]))
        ids = {key: i for i, key in enumerate(self.keys)}
        writers = [ids[k] for k in security.api_keys]
        self.writes = KeyRing(security.api_keys, writers)
        self.metrics = KeyRing(security.api_keys if security.protect_metrics else (), writers if security.protect_metrics else ())
        readers = [*security.read_keys, *security.api_keys] if security.read_keys else []
        self.reads = KeyRing(readers, [ids[k] for k in readers])

    def digests(self) -> list[bytes]:
        """SHA-256 of every key, in id order (names the rate-limit file's layout, not the keys)."""
        return [_digest(k) for k in self.keys]

    @staticmethod
    def require(ring: KeyRing, headers: Iterable[tuple[bytes, bytes]]) -> int | None:
        """The id of the request's key when `ring` needs one (None for an open ring); raise
        Unauthorized (401, WWW-Authenticate: Bearer) unless the request's key is in `ring`."""
        if ring.open:
            return None
        key_id = ring.match(presented_key(headers))
        if key_id is None:
            raise Unauthorized(REFUSAL)
        return key_id
