"""Answer a batch of requests so that one request can only hurt itself.

Both runtime adapters (TorchServe's handler, SageMaker's `code/inference.py`) hand
their requests to `answer_batch`, which

- reads each request on its own (core.read_request): a RequestError becomes that
  request's 4xx, any other exception is our bug and becomes that request's 500 with
  its request id (logged with the traceback);
- parses the read requests together (core.parse_batch: one tokenizer call for all
  their texts), each still refused alone; should that call fail as a whole, each
  request is parsed by itself, so the failure stays with the request that caused it;
- runs the parsed requests through the model together, and if that fails, finds
  the request(s) responsible by re-running the batch in halves, so the rest are
  still answered;
- keeps to the call's deadline (BUDGET_SHARE of responseTimeout): once it has
  passed, no request is read and no half is run again; what is left is answered
  with a 503 `deadline_exceeded` that says why, instead of the whole batch
  failing when TorchServe gives up on the worker;
- serialises every answer as strict JSON (no NaN or Infinity): an answer that
  cannot be is a 500 for that request alone.

Packed into each `.mar` (its marport_serving package); imports only the standard library and serving_common.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .serving_common import ModelCore, Request, RequestError, to_json

log = logging.getLogger(__name__)

INTERNAL = "internal_error"
DEADLINE = "deadline_exceeded"


@dataclass(slots=True)
class Outcome:
    status: int
    body: str  # strict JSON, ready to send
    kind: str | None = None  # the error type; None for an answer


@dataclass
class BatchReport:
    """What one handler call did, for the log line (and the operator metrics)."""

    requests: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # error type -> count
    parse_ms: float = 0.0
    predict_ms: float = 0.0
    predict_calls: int = 0  # more than 1 when a failing batch was split to find the culprit
    parsed: list = field(default_factory=list)  # what the core parsed, for its figures (operator metrics)
    answers: list = field(default_factory=list)  # the answers given, before serialising

    def line(self) -> str:
        bad = sum(self.rejected.values())
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items()))
        return (f"batch of {self.requests} requests, {bad} rejected{f' ({kinds})' if kinds else ''}; "
                f"parse {self.parse_ms:.1f} ms, model {self.predict_ms:.1f} ms in {self.predict_calls} call(s)")


def rejection(err: RequestError, request_id: str | None) -> Outcome:
    payload = err.payload()
    if request_id:
        payload["request_id"] = request_id
    return Outcome(err.code, to_json(payload), err.kind)


def internal_error(request_id: str | None, stage: str) -> Outcome:
    """Our own failure on one request: logged with its traceback, answered with its id."""
    log.exception("request %s failed while %s", request_id, stage)
    message = f"the server failed while {stage} this request; quote request_id {request_id} when reporting it"
    payload = {"code": 500, "type": INTERNAL, "message": message, "request_id": request_id}
    return Outcome(500, to_json(payload), INTERNAL)


def out_of_time(request_id: str | None, stage: str) -> Outcome:
    payload = {"code": 503, "type": DEADLINE, "request_id": request_id,
               "message": f"this batch used up its time budget (responseTimeout) before {stage} this request; "
                          "send it again"}
    if request_id is None:
        del payload["request_id"]
    return Outcome(503, to_json(payload), DEADLINE)


def _late(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


def _serialise(answer: Any, idx: int, request_id: Callable[[int], str | None]) -> Outcome:
    try:
        return Outcome(200, to_json(answer))
    except (ValueError, TypeError):  # NaN/Infinity, or a value JSON has no form for
        return internal_error(request_id(idx), "serialising the answer to")


def answer_batch(
    core: ModelCore,
    model: Any,
    count: int,
    read: Callable[[int], Request],
    request_id: Callable[[int], str | None],
    deadline: float | None = None,
) -> tuple[list[Outcome], BatchReport]:
    """Outcomes for requests 0..count-1, in order; `read(i)` builds request i (and may refuse it).

    `deadline` is a time.monotonic() value (serving_common.call_budget_s from now); None: no deadline.
    """
    report = BatchReport(requests=count)
    outcomes: list[Outcome | None] = [None] * count
    read_ok: list[tuple[int, Any]] = []
    started = time.perf_counter()
    for idx in range(count):
        if _late(deadline):
            outcomes[idx] = out_of_time(request_id(idx), "reading")
            continue
        try:
            read_ok.append((idx, core.read_request(read(idx), model)))
        except RequestError as err:
            outcomes[idx] = rejection(err, request_id(idx))
        except Exception:  # noqa: BLE001 - anything else is our bug, confined to this request
            outcomes[idx] = internal_error(request_id(idx), "reading")
    parsed = _parse_isolated(core, model, read_ok, outcomes, request_id)
    report.parse_ms = (time.perf_counter() - started) * 1000
    report.parsed = [p for _, p in parsed]
    started = time.perf_counter()
    _predict_isolated(core, model, parsed, outcomes, request_id, report, deadline)
    report.predict_ms = (time.perf_counter() - started) * 1000
    # Every request has its outcome by now; were one missing (our bug), it is that request's 500, in its place.
    answered = [o if o is not None else internal_error(request_id(i), "answering") for i, o in enumerate(outcomes)]
    for outcome in answered:
        if outcome.kind:
            report.rejected[outcome.kind] = report.rejected.get(outcome.kind, 0) + 1
    return answered, report


def _parse_isolated(core, model, items: list[tuple[int, Any]], outcomes: list, request_id) -> list[tuple[int, Any]]:
    """core.parse_batch over the read requests; if it fails as a whole, one request at a time."""
    if not items:
        return []
    try:
        results = core.parse_batch(model, [item for _, item in items])
    except Exception as exc:  # noqa: BLE001 - find the request responsible, alone
        if len(items) == 1 and isinstance(exc, RequestError):
            outcomes[items[0][0]] = rejection(exc, request_id(items[0][0]))
            return []
        if len(items) == 1:
            idx = items[0][0]
            outcomes[idx] = internal_error(request_id(idx), "reading")
            return []
        log.warning("parsing %d requests together failed; parsing each alone", len(items))
        return [p for one in items for p in _parse_isolated(core, model, [one], outcomes, request_id)]
    parsed = []
    for (idx, _), result in zip(items, results):
        if isinstance(result, RequestError):
            outcomes[idx] = rejection(result, request_id(idx))
        else:
            parsed.append((idx, result))
    return parsed


def _predict_isolated(core, model, items: Sequence[tuple[int, Any]], outcomes: list, request_id, report,
                      deadline: float | None = None) -> None:
    """Predict items together; on failure, split in halves until the failing requests are alone,
    as long as the deadline allows (2n-1 forward passes at worst)."""
    if not items:
        return
    if _late(deadline):
        for idx, _ in items:
            outcomes[idx] = out_of_time(request_id(idx), "scoring")
        return
    report.predict_calls += 1
    try:
        answers = core.predict(model, [p for _, p in items])
    except RequestError as err:
        if len(items) == 1:
            outcomes[items[0][0]] = rejection(err, request_id(items[0][0]))
            return
    except Exception:  # noqa: BLE001
        if len(items) == 1:
            outcomes[items[0][0]] = internal_error(request_id(items[0][0]), "predicting")
            return
    else:
        for (idx, _), answer in zip(items, answers):
            outcomes[idx] = _serialise(answer, idx, request_id)  # the id is looked up only for a failure
        report.answers.extend(answers)
        return
    log.warning("a batch of %d requests failed together; retrying it in halves to find the culprit", len(items))
    half = len(items) // 2
    _predict_isolated(core, model, items[:half], outcomes, request_id, report, deadline)
    _predict_isolated(core, model, items[half:], outcomes, request_id, report, deadline)
