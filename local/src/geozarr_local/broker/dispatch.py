"""What eventing-rabbitmq's Trigger dispatcher does with a subscriber's answer: one table.

Read from knative-extensions/eventing-rabbitmq `pkg/dispatcher/dispatcher.go` (commit
bd1ee997d372a3aae8fdcca10fbceb61cd4e9e32: `getStatus`, `dispatch`, `dispatchDLQ`) and
knative/eventing `pkg/kncloudevents/retries.go` (commit
8cf4c4b673034020f5ecab731fb6a2a7f9350244: `SelectiveRetry`), with the CloudEvents SDK's
backoff (sdk-go `v2/context/retry.go`, `BackoffFor`: linear delay * n, exponential
delay * 2^n before retry n). The local broker takes every decision from here.

| subscriber's answer                       | decision     | then                          |
|-------------------------------------------|--------------|-------------------------------|
| 2xx without a CloudEvent                  | ack          | done                          |
| 2xx with a CloudEvent                     | ack          | publish the reply             |
| 2xx with a reply the SDK cannot decode    | ack          | the reply is dropped          |
| 2xx whose reply the ingress refuses       | dead-letter  | dest, code (the 2xx)          |
| 404, 408, 409, 429, 5xx, timeout, no answer | retry      | backoff; when exhausted:      |
|                                           |              | dead-letter with dest, code   |
|                                           |              | (-1 without an answer)        |
| any other (1xx, 3xx, 400, 422, ...)       | ack and drop | nothing published or recorded |

A dead letter goes to the Trigger's dead-letter queue, whose own dispatcher delivers it to
the `deadLetterSink` with the same retries; when that fails too, or the Trigger has no sink,
upstream acks and the event is gone (`dispatchDLQ`, `sendToRabbitMQ`).

`dispatch` also sets `knativeerrordata` for a refused reply, to a value (a Go error) that the
SDK's extension validation refuses, so no dead letter carries it. The local broker's ingress
is in-process and refuses no valid event; a reply that cannot be journaled (the broker is
stopping) leaves its delivery unacknowledged, so it is redone after the restart.

One deliberate difference: a reply whose type matches the Trigger that produced it would loop
forever on the cluster; the local broker dead-letters it instead, loudly.
"""

from __future__ import annotations

from enum import StrEnum

from geozarr_pipeline.errors import is_retryable_status

# `knativeerrorcode` of an attempt that got no HTTP answer (getStatus returns -1).
NO_STATUS = -1


class Decision(StrEnum):
    ACK = "ack"
    RETRY = "retry"
    DROP = "drop"


class Outcome(StrEnum):
    """How a delivery ended, as the delivery log records it."""

    DELIVERED = "delivered"
    DROPPED = "dropped"
    DEAD_LETTERED = "dead-lettered"
    LOST = "lost"


def decide(status: int | None) -> Decision:
    """The dispatcher's decision for one attempt's status (None: timeout or no answer)."""
    if status is None or is_retryable_status(status):
        return Decision.RETRY
    if 200 <= status < 300:
        return Decision.ACK
    return Decision.DROP


def backoff_seconds(policy: str, delay: float, retry_number: int) -> float:
    """Seconds before retry `retry_number` (1 for the first retry)."""
    if retry_number < 1:
        raise ValueError("retry numbers start at 1")
    if policy == "linear":
        return delay * retry_number
    return float(delay * 2**retry_number)


# The RabbitmqSource adapter (eventing-rabbitmq pkg/adapter/adapter.go `postMessage`, commit
# bd1ee997) sends with the CloudEvents SDK's default retry rule, not SelectiveRetry: sdk-go
# v2 protocol/http/protocol.go `defaultRetriableErrors`, plus connection errors and
# timeouts. When the send is not acked it nacks without requeue (`processMessages`): the
# message goes to the queue's dead-letter exchange, or is gone if the queue has none.
SOURCE_RETRIED_STATUSES = frozenset({404, 413, 425, 429, 502, 503, 504})


def source_retries(status: int | None) -> bool:
    """Whether the source adapter sends again after this answer (None: no answer)."""
    return status is None or status in SOURCE_RETRIED_STATUSES
