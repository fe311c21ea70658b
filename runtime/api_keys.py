"""API keys: authentication, per-key rate limits and token quotas, and who may abort which request.

Keys come from ``--api-key`` (one key, an admin) and/or ``--api-key-file`` (one key a line:
``KEY REQUESTS_PER_MIN TOKENS_PER_MIN MAX_CONCURRENT [admin]``, 0 = unlimited, ``#`` starts a comment). The
``ApiKeyMiddleware`` (pure ASGI, streams pass through unbuffered) answers 401 without a valid key, and for the
generation routes 429 with ``Retry-After`` when the key is over its requests/min, tokens/min or concurrency budget.
Requests are charged when admitted, tokens (prompt + completion) when their request finishes. The key's policy is put
in ``scope["state"]["api_key"]`` for the routes (abort ownership). Budgets are token buckets refilled continuously
(a per-minute rate, a burst of one minute).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from radixgen.runtime.http_common import HttpError

#: routes that generate (and are rate limited); the others only authenticate
GENERATION_PATHS = ("/generate", "/v1/completions", "/v1/chat/completions")


@dataclass(frozen=True)
class KeyPolicy:
    """One key's budgets (0 = unlimited) and role.

    Attributes:
        key: the secret. key_id: a short non-secret id for logs and metrics (sha256 prefix).
        requests_per_min / tokens_per_min: refill rates of the two buckets. max_concurrent: requests in flight.
        admin: may abort any request (others only their own).
    """

    key: str
    requests_per_min: int = 0
    tokens_per_min: int = 0
    max_concurrent: int = 0
    admin: bool = False
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.key or any(c.isspace() for c in self.key):
            raise ValueError("api key: must be non-empty without whitespace")
        for name in ("requests_per_min", "tokens_per_min", "max_concurrent"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: must be an integer >= 0 (0 = unlimited), got {v!r}")
        object.__setattr__(self, "key_id", hashlib.sha256(self.key.encode()).hexdigest()[:8])


def load_api_keys(path: str) -> list[KeyPolicy]:
    """Parse an ``--api-key-file``.

    Raises:
        ValueError: naming the file and line of a malformed entry, or a repeated key.
    """
    policies: list[KeyPolicy] = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            try:
                if len(words) not in (4, 5) or (len(words) == 5 and words[4] != "admin"):
                    raise ValueError("expected KEY REQUESTS_PER_MIN TOKENS_PER_MIN MAX_CONCURRENT [admin]")
                policies.append(KeyPolicy(words[0], int(words[1]), int(words[2]), int(words[3]), len(words) == 5))
            except ValueError as e:
                raise ValueError(f"api_key_file: {path}:{number}: {e}") from None
    if len({p.key for p in policies}) != len(policies):
        raise ValueError(f"api_key_file: {path}: a key is listed twice")
    return policies


class _Bucket:
    """A token bucket: ``capacity`` units refilled at ``capacity`` per minute; it may go negative (charged after)."""

    def __init__(self, per_min: int) -> None:
        self.capacity = float(per_min)
        self.level = float(per_min)
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.capacity / 60.0)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 if it is now)."""
        self._refill()
        return 0.0 if self.level >= amount else (amount - self.level) * 60.0 / self.capacity

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount


class KeyLimiter:
    """The budgets of every key, and their usage counters.

    Args:
        policies: the keys. registry: the server's Prometheus registry (per-key counters), or None.
    """

    def __init__(self, policies: list[KeyPolicy], registry: CollectorRegistry | None = None) -> None:
        self.policies = {p.key.encode(): p for p in policies}
        self._requests = {p.key: _Bucket(p.requests_per_min) for p in policies if p.requests_per_min}
        self._tokens = {p.key: _Bucket(p.tokens_per_min) for p in policies if p.tokens_per_min}
        self._in_flight = {p.key: 0 for p in policies}
        self.requests_total: Counter | None = None
        self.tokens_total: Counter | None = None
        if registry is not None:
            self.requests_total = Counter(
                "radixgen_api_key_requests", "Generation requests by API key id and outcome (admitted, 429)",
                ["key_id", "outcome"], registry=registry,
            )
            self.tokens_total = Counter(
                "radixgen_api_key_tokens", "Prompt + completion tokens charged to an API key id", ["key_id"],
                registry=registry,
            )

    def authenticate(self, presented: bytes) -> KeyPolicy | None:
        """The policy of a presented key (constant-time comparison), or None."""
        found = None
        for key, policy in self.policies.items():
            if hmac.compare_digest(presented, key):
                found = policy
        return found

    def admit(self, policy: KeyPolicy) -> None:
        """Take one request (and a concurrency slot) from the key's budget.

        Raises:
            HttpError: 429 (``Retry-After`` in its ``headers``) when a budget is spent.
        """
        busy = policy.max_concurrent > 0 and self._in_flight[policy.key] >= policy.max_concurrent
        waits = [1.0 if busy else 0.0]  # a slot frees when a running request ends: retry in a second
        if policy.key in self._requests:
            waits.append(self._requests[policy.key].wait_for(1.0))
        if policy.key in self._tokens:
            waits.append(self._tokens[policy.key].wait_for(1e-9))  # spent tokens must be earned back first
        wait = max(waits)
        if wait > 0:
            self._count(policy, "429")
            raise HttpError(
                429, "rate limit: this API key's requests/min, tokens/min or concurrency is spent",
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )
        if policy.key in self._requests:
            self._requests[policy.key].take(1.0)
        self._in_flight[policy.key] += 1
        self._count(policy, "admitted")

    def release(self, policy: KeyPolicy) -> None:
        """The request admitted for ``policy`` ended (its concurrency slot is free)."""
        self._in_flight[policy.key] -= 1

    def charge_tokens(self, policy: KeyPolicy, tokens: int) -> None:
        """Charge a finished request's prompt + completion tokens."""
        if policy.key in self._tokens:
            self._tokens[policy.key].take(float(tokens))
        if self.tokens_total is not None:
            self.tokens_total.labels(key_id=policy.key_id).inc(tokens)

    def _count(self, policy: KeyPolicy, outcome: str) -> None:
        if self.requests_total is not None:
            self.requests_total.labels(key_id=policy.key_id, outcome=outcome).inc()


class ApiKeyMiddleware:
    """Pure ASGI middleware (does not buffer streams): 401 unless ``Authorization: Bearer <key>`` names a known key;
    429 on a generation route when the key is over budget. The key's policy goes to ``scope["state"]["api_key"]``.

    Args:
        app: the wrapped app. limiter: the keys and budgets. exempt: paths served without a key.
    """

    def __init__(self, app: Any, limiter: KeyLimiter, exempt: tuple[str, ...] = ("/health",)) -> None:
        self.app = app
        self.limiter = limiter
        self.exempt = exempt

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        scheme, _, presented = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        policy = self.limiter.authenticate(presented.strip()) if scheme.lower() == b"bearer" else None
        if policy is None:
            msg = "invalid or missing API key: send 'Authorization: Bearer <key>'"
            await HttpError(401, msg).response()(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key"] = policy
        if scope["path"] not in GENERATION_PATHS or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            self.limiter.admit(policy)
        except HttpError as e:
            await e.response()(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.release(policy)


def owner_of(request: Any) -> KeyPolicy | None:
    """The API key policy that sent ``request`` (set by ApiKeyMiddleware), or None without keys."""
    return None if request is None else getattr(request.state, "api_key", None)
