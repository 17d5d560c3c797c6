"""One request can only hurt itself: each step of a call returns, per request, its result or its failed Outcome.

- a RequestError is that request's 4xx; any other exception is our bug, that request's 500 with its request id
  (logged with the traceback);
- work done together (Model.prepare, Model.predict) that fails as a whole is redone in halves until the request
  responsible is alone, so the rest are still answered;
- past the call's deadline no new work starts: what is left gets a 503 `deadline_exceeded` that says so;
- every answer is strict JSON, or a 500 for that request alone.

Nothing here mutates what it is given: endpoint.py drives the steps and puts the results together.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .bodies import to_json
from .contract import RequestError

log = logging.getLogger(__name__)

INTERNAL = "internal_error"
DEADLINE = "deadline_exceeded"


@dataclass(slots=True)
class Outcome:
    status: int
    body: str  # strict JSON, ready to send
    kind: str | None = None  # the error type; None for an answer


def rejection(err: RequestError, request_id: str | None) -> Outcome:
    payload = err.payload()
    if request_id:
        payload["request_id"] = request_id
    return Outcome(err.code, to_json(payload), err.kind)


def internal_error(request_id: str | None, stage: str) -> Outcome:
    """Our own failure on one request: logged with its traceback, answered with its id."""
    log.exception("request %s failed while %s", request_id, stage)
    message = f"the server failed while {stage} this request; quote request_id {request_id} when reporting it"
    return Outcome(500, to_json({"code": 500, "type": INTERNAL, "message": message, "request_id": request_id}),
                   INTERNAL)


def out_of_time(request_id: str | None, stage: str) -> Outcome:
    payload: dict[str, Any] = {"code": 503, "type": DEADLINE}
    if request_id is not None:
        payload["request_id"] = request_id
    payload["message"] = (f"this batch used up its time budget (responseTimeout) before {stage} this request; "
                          "send it again")
    return Outcome(503, to_json(payload), DEADLINE)


def late(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


def failed(err: BaseException, request_id: str | None, stage: str) -> Outcome:
    return rejection(err, request_id) if isinstance(err, RequestError) else internal_error(request_id, stage)


def together(step: Callable[[list], list], items: Sequence[Any], ids: Sequence[str | None],
             deadline: float | None, stage: str) -> tuple[list, int]:
    """step(items) -> one result per item (a RequestError refuses that item alone). Should it fail as a whole,
    it runs again in halves until the failing items are alone, while the deadline allows (2n-1 calls at worst).
    Returns the results (or Outcomes) in order and how many times step ran."""
    if not items:
        return [], 0
    if late(deadline):
        return [out_of_time(i, stage) for i in ids], 0
    try:
        results = step(list(items))
        if len(results) != len(items):
            raise RuntimeError(f"{len(items)} inputs gave {len(results)} results")
    except Exception as exc:  # noqa: BLE001 - find the request responsible
        if len(items) == 1:
            return [failed(exc, ids[0], stage)], 1
        log.warning("%d requests failed together while %s; running them again in halves", len(items), stage)
        half = len(items) // 2
        first, calls_a = together(step, items[:half], ids[:half], deadline, stage)
        second, calls_b = together(step, items[half:], ids[half:], deadline, stage)
        return first + second, 1 + calls_a + calls_b
    return [rejection(r, i) if isinstance(r, RequestError) else r for r, i in zip(results, ids)], 1


def serialised(answer: Any, request_id: str | None) -> Outcome:
    """An answer as strict JSON (no NaN or Infinity), or that request's 500."""
    if isinstance(answer, Outcome):
        return answer
    try:
        return Outcome(200, to_json(answer))
    except (ValueError, TypeError):
        return internal_error(request_id, "serialising the answer to")
