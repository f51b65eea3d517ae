"""A circuit breaker for a remote dependency (the LLM endpoint): after `failure_threshold` failed
calls in a row it opens, and calls are refused at once instead of each waiting out a timeout on a
dead endpoint; after `open_s` (or the endpoint's own Retry-After, when longer) one call is let
through as a probe. The probe's success closes the circuit; its failure opens it again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]

# An endpoint may ask for a long pause (Retry-After: 3600); the breaker still probes within this.
MAX_OPEN_S = 300.0


class CircuitBreaker:
    def __init__(self, failure_threshold: int, open_s: float, clock: Callable[[], float] = time.monotonic):
        if failure_threshold < 1 or open_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and open_s > 0")
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self._clock = clock
        self._lock = threading.Lock()  # the Generator's calls run in threads
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False
        self.opened_total = 0  # times the circuit opened, for status and tests

    @property
    def state(self) -> State:
        with self._lock:
            return self._state()

    def _state(self) -> State:
        if self._open_until is None:
            return "closed"
        return "open" if self._clock() < self._open_until else "half_open"

    def retry_in_s(self) -> float:
        """Seconds until the next probe may go (0 when calls are allowed)."""
        with self._lock:
            return 0.0 if self._open_until is None else max(0.0, self._open_until - self._clock())

    def allow(self) -> bool:
        """May a call go now? Closed: yes. Open: no. Half-open: one probe at a time."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "open" or self._probing:
                return False
            self._probing = True
            return True

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._open_until = None
            self._probing = False

    def record_failure(self, retry_after_s: float | None = None) -> None:
        """A failed call. `retry_after_s`: the endpoint said when to come back (429/503), which
        opens the circuit for that long at once, whatever the count."""
        with self._lock:
            before = self._state()
            self._failures += 1
            probe_failed = self._probing
            self._probing = False
            if retry_after_s is not None or probe_failed or self._failures >= self.failure_threshold:
                if before != "open":
                    self.opened_total += 1
                pause = min(max(self.open_s, retry_after_s or 0.0), MAX_OPEN_S)
                self._open_until = max(self._open_until or 0.0, self._clock() + pause)

    def status(self) -> dict[str, object]:
        with self._lock:
            state = self._state()
            retry_in = 0.0 if self._open_until is None else max(0.0, self._open_until - self._clock())
            return {
                "state": state,
                "consecutive_failures": self._failures,
                "opened_total": self.opened_total,
                "retry_in_s": round(retry_in, 1),
            }
