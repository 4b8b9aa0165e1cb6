"""In-process retries: one tenacity policy per kind of call, the same rules for every kind.

A call is retried only when it fails with a PipelineError that may pass (`retryable`, as
`faults` classified the answer, the httpx or the botocore error) and that its upstream did not
refuse outright: an error recording a 4xx other than 408/429 (`status` in its details, e.g. S3
AccessDenied) stays transient for the broker, which redelivers once the deployment is fixed,
but retrying it within seconds is no use. Attempts are bounded; the wait between them is
exponential with full jitter, capped at the policy's `max_backoff_seconds` (the setting
`retry_backoff_cap_seconds`), or the Retry-After the upstream sent (`retry_after_s` in the
error's details), capped the same way and never above MAX_RETRY_AFTER_SECONDS. Every retry
is logged once, with the item id the caller passes. The last error is raised as it is.

An error a policy has given up on is final for every policy around it, so nested calls (a
token fetch inside a STAC API request, an S3 read inside a product read) never multiply their
attempts. Past these attempts the broker's redelivery of the event takes over.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

import tenacity

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import PipelineError
from geozarr_pipeline.faults import TRANSIENT_STATUSES

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], None]

MAX_RETRY_AFTER_SECONDS = 10.0
# Set on an error a policy re-raised: no enclosing policy retries it again.
_GIVEN_UP = "_retry_policy_gave_up"


def should_retry(error: BaseException) -> bool:
    """Whether a failed attempt is worth another one now (see the module docstring)."""
    if not isinstance(error, PipelineError) or not error.retryable:
        return False
    if getattr(error, _GIVEN_UP, False):
        return False
    status = error.details.get("status")
    return not isinstance(status, int) or status in TRANSIENT_STATUSES


@dataclass(frozen=True)
class RetryPolicy:
    """How one kind of call is retried: `attempts` counts every attempt, the first included;
    the n-th wait is random in [0, min(max_backoff_seconds, backoff_seconds * 2**(n-1))], or
    the Retry-After the error asked for, up to min(MAX_RETRY_AFTER_SECONDS, max_backoff_seconds)."""

    kind: str
    attempts: int
    backoff_seconds: float
    max_backoff_seconds: float
    sleep: Sleep = field(default=time.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"a {self.kind} retry policy needs at least one attempt")

    def once(self) -> RetryPolicy:
        """The same kind of call, a single attempt (records that must not delay work)."""
        return replace(self, attempts=1)

    def wait_seconds(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        hinted = error.details.get("retry_after_s") if isinstance(error, PipelineError) else None
        if isinstance(hinted, int | float) and hinted >= 0:
            return min(float(hinted), MAX_RETRY_AFTER_SECONDS, self.max_backoff_seconds)
        backoff = tenacity.wait_random_exponential(
            multiplier=self.backoff_seconds, max=self.max_backoff_seconds
        )
        return float(backoff(state))

    def call(self, fn: Callable[[], T], *, item_id: str | None) -> T:
        """`fn()` under this policy; `item_id` names the item the call is for (None if none)."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=self.wait_seconds,
            retry=tenacity.retry_if_exception(should_retry),
            before_sleep=functools.partial(self._log_retry, item_id),
            sleep=self.sleep,
            reraise=True,
        )
        try:
            return retrying(fn)
        except PipelineError as error:
            setattr(error, _GIVEN_UP, True)
            raise

    def _log_retry(self, item_id: str | None, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "retrying",
            extra={
                "kind": self.kind,
                "item_id": item_id,
                "attempt": state.attempt_number,
                "max_attempts": self.attempts,
                "delay_s": round(delay, 3),
                "error": error.code if isinstance(error, PipelineError) else type(error).__name__,
                "reason": error.message if isinstance(error, PipelineError) else str(error),
            },
        )


@dataclass(frozen=True)
class RetryPolicies:
    """The policy of each kind of call, from the settings."""

    source: RetryPolicy  # source item and product metadata reads
    stac_api: RetryPolicy  # STAC API requests, and writes that raced a concurrent writer
    s3: RetryPolicy  # calls on our own object storage
    token: RetryPolicy  # OIDC token fetches

    @classmethod
    def from_settings(cls, settings: Settings, *, sleep: Sleep = time.sleep) -> RetryPolicies:
        def policy(kind: str, attempts: int, backoff_seconds: float) -> RetryPolicy:
            cap = settings.retry_backoff_cap_seconds
            return RetryPolicy(kind, attempts, backoff_seconds, cap, sleep)

        return cls(
            source=policy(
                "source", settings.retry_source_attempts, settings.retry_source_backoff_seconds
            ),
            stac_api=policy(
                "stac_api", settings.stac_api_retries + 1, settings.stac_api_backoff_seconds
            ),
            s3=policy("s3", settings.retry_s3_attempts, settings.retry_s3_backoff_seconds),
            token=policy(
                "token", settings.retry_token_attempts, settings.retry_token_backoff_seconds
            ),
        )


@functools.cache
def default_policies() -> RetryPolicies:
    """The policies of the settings' defaults (the environment is not read), for the few
    readers whose caller passes no policy of its own."""
    return RetryPolicies.from_settings(Settings.model_construct())
