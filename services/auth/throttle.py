"""Throttling of failed logins, per account and per client address (sliding window).

After `max_failures` failed logins for the same key within `window` seconds, further
logins for that key are refused until the oldest of those failures leaves the window,
whether the password is right or not (otherwise guessing would only slow down). A
successful login clears the account's failures (not the address's).

Counters live in the memory of one auth process: with several auth replicas an attacker
gets at most `replicas x max_failures` tries a window. docs/identity.md says why that is
acceptable here.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from services.common.config import Environ, number, whole
from services.common.errors import ResourceExhausted


@dataclass(frozen=True)
class Limits:
    per_account: int = 5
    per_address: int = 50
    window_seconds: float = 900.0

    @classmethod
    def from_env(cls, env: Environ | None = None) -> Limits:
        env = os.environ if env is None else env
        return cls(
            per_account=whole(env, "EMBEDVIZ_LOGIN_MAX_FAILURES_PER_ACCOUNT", cls.per_account, minimum=1),
            per_address=whole(env, "EMBEDVIZ_LOGIN_MAX_FAILURES_PER_ADDRESS", cls.per_address, minimum=1),
            window_seconds=number(env, "EMBEDVIZ_LOGIN_FAILURE_WINDOW", cls.window_seconds, minimum=1.0),
        )


class LoginThrottled(ResourceExhausted):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, reason="LOGIN_THROTTLED")
        self.retry_after = retry_after
        delay = duration_pb2.Duration(seconds=max(1, math.ceil(retry_after)))
        self.details = (error_details_pb2.RetryInfo(retry_delay=delay),)


def _wait_words(seconds: float) -> str:
    if seconds < 90:
        n = max(1, math.ceil(seconds))
        return f"{n} second{'s' if n != 1 else ''}"
    n = math.ceil(seconds / 60)
    return f"{n} minutes"


class LoginThrottle:
    MAX_KEYS = 100_000  # forget the oldest keys beyond this, so garbage cannot fill memory

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.limits.window_seconds:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def check(self, email: str, address: str) -> None:
        """Raise LoginThrottled when the account or the address has used up its tries."""
        now = self._clock()
        checks = [(f"account:{email}", self.limits.per_account, "this account")]
        if address:
            checks.append((f"address:{address}", self.limits.per_address, "your network address"))
        for key, limit, what in checks:
            times = self._recent(key, now)
            if len(times) >= limit:
                wait = times[len(times) - limit] + self.limits.window_seconds - now
                raise LoginThrottled(
                    f"too many failed logins for {what}; try again in {_wait_words(wait)}",
                    retry_after=wait,
                )

    def failed(self, email: str, address: str) -> None:
        now = self._clock()
        for key in (f"account:{email}", f"address:{address}" if address else ""):
            if key:
                self._recent(key, now)
                self._failures.setdefault(key, deque()).append(now)
        while len(self._failures) > self.MAX_KEYS:
            self._failures.pop(next(iter(self._failures)))

    def succeeded(self, email: str) -> None:
        self._failures.pop(f"account:{email}", None)
