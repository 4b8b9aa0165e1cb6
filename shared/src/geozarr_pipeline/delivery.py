"""One delivery of a CloudEvent to a stage: parse, run, reply, and record each transition.

Every transition (started, done, failed, retry, crashed, refused) is one log line with the same
fields and, where the event names an item, a stage attempt record. The reply rules (a
permanent failure is a 200 with an `eopf.geozarr.failed` event, a transient fault a retried
status) are `cloudevent_http`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from geozarr_pipeline.attempts import AttemptJournal, AttemptOutcome, StageAttempt
from geozarr_pipeline.cloudevent_http import (
    CLOSE_CONNECTION,
    build_failure,
    build_reply,
    decode_input,
    error_response,
    item_of,
    json_response,
    parse_event,
    problem_of,
    read_body,
    response_of,
)
from geozarr_pipeline.errors import InvalidEvent, PermanentError, PipelineError
from geozarr_pipeline.events import EventData, Problem, Stage, is_safe_id, quoted_value
from geozarr_pipeline.redaction import quoted

if TYPE_CHECKING:
    import flask

log = logging.getLogger(__name__)

StageRunner = Callable[[EventData], EventData]
# Opened on the first event that names an item (a broken status root only costs a warning).
JournalFactory = Callable[[], AttemptJournal]


class Delivery:
    """One delivery's transitions: the log line of each, and its attempt record."""

    def __init__(self, stage: Stage, journal: JournalFactory | None) -> None:
        self.stage = stage
        self.journal_factory = journal
        self.journal: AttemptJournal | None = None
        self.started = time.monotonic()
        self.fields: dict[str, Any] = {"stage": stage.value}
        self.attempt: StageAttempt | None = None

    def identify(self, event: CloudEvent, data: EventData | None) -> None:
        item_id, collection = (
            value if value is None or is_safe_id(value) else quoted_value(value)
            for value in item_of(data, event)
        )
        self.fields.update(
            event_id=event["id"],
            event_type=event["type"],
            item_id=item_id,
            collection=collection,
        )

    def transition(
        self, outcome: str, level: int = logging.INFO, *, exc_info: bool = False, **extra: Any
    ) -> None:
        """The one structured line of a transition: the same fields in every stage."""
        duration = round(time.monotonic() - self.started, 3)
        log.log(
            level,
            f"{self.stage.value} {outcome}",
            exc_info=exc_info,
            extra={**self.fields, "outcome": outcome, "duration_s": duration, **extra},
        )

    def start(self) -> None:
        self.transition("started")
        self._record_start()

    def _open_journal(self) -> AttemptJournal | None:
        """The attempt journal, or None with a warning: recording never stops the work."""
        if self.journal is None and self.journal_factory is not None:
            try:
                self.journal = self.journal_factory()
            except Exception as exc:  # noqa: BLE001  # settings or storage unusable: work on
                self.journal_factory = None
                log.warning(
                    "stage attempts not recorded",
                    extra={**self.fields, "error": quoted(str(exc))},
                )
        return self.journal

    def _record_start(self) -> None:
        item_id, collection = self.fields.get("item_id"), self.fields.get("collection")
        # An id that is not safe names no item: nothing of an invalid event is recorded.
        if not (is_safe_id(item_id) and is_safe_id(collection)):
            return
        if self._open_journal() is not None:
            assert self.journal is not None
            self.attempt = self.journal.start(
                self.stage,
                collection=collection,
                item_id=item_id,
                event_id=self.fields["event_id"],
                event_type=self.fields["event_type"],
            )

    def finish(
        self,
        outcome: AttemptOutcome,
        problem: Problem | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        if self.attempt is None:
            self._record_start()  # a failure before the work started (e.g. invalid data)
        if self.journal is not None and self.attempt is not None:
            self.journal.finish(self.attempt, outcome, problem=problem, result=result)


def handle_request(
    request: flask.Request,
    stage: Stage,
    run: StageRunner,
    journal: JournalFactory | None = None,
) -> flask.Response:
    """The whole life of one delivery: everything a stage entrypoint needs.

    Every transition (started, done, failed, retry, crashed, refused) is one log line with
    the same fields and, where the event names an item, a stage attempt record in `journal`.
    """
    delivery = Delivery(stage, journal)
    delivery.fields["event_id"] = quoted(request.headers.get("ce-id", ""), 200)
    try:
        event = parse_event(dict(request.headers), read_body(request))
    except InvalidEvent as exc:
        delivery.transition("refused", logging.WARNING, problem=exc.code, error=quoted(exc.message))
        response = error_response(exc)
        if request.environ.get(CLOSE_CONNECTION):
            response.headers["Connection"] = "close"
        return response
    data: EventData | None = None
    try:
        data = decode_input(stage, event)
        delivery.identify(event, data)
        delivery.start()
        result = run(data)
        reply = build_reply(stage, event, result)
    except PermanentError as exc:
        delivery.identify(event, data)
        reply = build_failure(stage, event, exc, data)
        problem = problem_of(exc)
        delivery.transition(
            "failed", logging.WARNING, problem=exc.code, field=exc.field, error=problem.message
        )
        delivery.finish("failed", problem)
    except PipelineError as exc:
        problem = problem_of(exc)
        delivery.transition(
            "retry", logging.WARNING, status=problem.status, problem=exc.code, error=problem.message
        )
        delivery.finish("retry", problem)
        return error_response(exc)
    except Exception:  # noqa: BLE001  # logged with its traceback and answered 500 (retried)
        delivery.transition("crashed", logging.ERROR, exc_info=True)
        crash = Problem(code="internal_error", message="unexpected", retryable=True, status=500)
        delivery.finish("crashed", crash)
        problem_body = {"error": "internal_error", "message": "unexpected failure; see the logs"}
        return json_response(500, problem_body)
    else:
        delivery.transition("done", reply_type=reply["type"])
        delivery.finish("done", result=result.model_dump(mode="json"))
    headers, body = to_binary(reply)
    return response_of(200, body, headers)
