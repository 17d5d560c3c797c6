"""Heavy traffic at the caps mixed with light traffic, and a worker killed under load.

Both are time-bounded closed loops against a loopback TorchServe; tests/test_hostile_serving.py runs them with
the demo model, small caps and a short responseTimeout: zero 5xx, zero worker restarts, every heavy request
answered or refused up front.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import psutil
import requests

LONG_TEXT = ("The room was clean, the staff were kind and breakfast was generous. " * 80)[:5000]

# The largest handler call must finish within this share of responseTimeout: the other
# half is headroom for a noisy machine and for another model's worker on the same cores.
TIMEOUT_SHARE = 0.5


def derive_max_tokens(tokens_per_s: float, response_timeout_s: float, batch_size: int) -> int:
    """Per-request token cap such that batch_size requests at the cap fit in TIMEOUT_SHARE of the timeout."""
    return int(math.floor(tokens_per_s * response_timeout_s * TIMEOUT_SHARE / batch_size))


@dataclass
class Reply:
    kind: str  # "heavy" or "light"
    status: int  # HTTP status, or 0 for a connection failure
    latency_ms: float
    json_ok: bool  # the body parsed as strict JSON
    error_type: str | None = None


@dataclass
class MixResult:
    seconds: float
    replies: list[Reply] = field(repr=False)

    def summary(self, heavy_texts: int) -> dict:
        light = [r for r in self.replies if r.kind == "light"]
        heavy = [r for r in self.replies if r.kind == "heavy"]
        light_ok = [r.latency_ms for r in light if r.status == 200]
        p50, p99 = (np.percentile(light_ok, [50, 99]).tolist() if light_ok else (None, None))
        heavy_ok = sum(r.status == 200 for r in heavy)
        return {
            "seconds": self.seconds,
            "light_requests": len(light),
            "light_p50_ms": p50,
            "light_p99_ms": p99,
            "heavy_requests": len(heavy),
            "heavy_answered": heavy_ok,
            "heavy_refused_413": sum(r.status == 413 for r in heavy),
            "heavy_texts_per_s": heavy_ok * heavy_texts / self.seconds,
            "statuses": dict(Counter(str(r.status) for r in self.replies)),
            "server_errors": sum(r.status >= 500 or r.status == 0 for r in self.replies),
            "non_json": sum(not r.json_ok for r in self.replies),
        }


def strict_json(text: str):
    """Parse an answer as a strict client would: NaN or Infinity is an error (ValueError)."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _send(session, url, body, headers, kind, timeout) -> Reply:
    started = time.perf_counter()
    try:
        got = session.post(url, data=body[0], headers={"Content-Type": body[1], **headers}, timeout=timeout)
    except requests.RequestException:
        return Reply(kind, 0, (time.perf_counter() - started) * 1000, False)
    latency = (time.perf_counter() - started) * 1000
    try:
        doc = strict_json(got.text)
    except ValueError:
        return Reply(kind, got.status_code, latency, False)
    error = doc.get("type") if isinstance(doc, dict) and got.status_code != 200 else None
    return Reply(kind, got.status_code, latency, True, error)


def mixed_load(url: str, headers: dict, heavy: tuple[bytes, str], light: list[tuple[bytes, str]],
               heavy_clients: int, light_clients: int, seconds: float, timeout: float = 600) -> MixResult:
    """Closed-loop clients for `seconds`: some always sending the heavy body, the rest light ones."""
    replies: list[Reply] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(kind: str, offset: int):
        i = offset
        with requests.Session() as session:
            while time.monotonic() < deadline:
                body = heavy if kind == "heavy" else light[i % len(light)]
                reply = _send(session, url, body, headers, kind, timeout)
                i += 1
                with lock:
                    replies.append(reply)

    threads = [threading.Thread(target=client, args=("heavy", i)) for i in range(heavy_clients)]
    threads += [threading.Thread(target=client, args=("light", i * 7)) for i in range(light_clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return MixResult(time.monotonic() - started, replies)


def worker_pids(management_url: str, headers: dict, model: str) -> list[int]:
    got = requests.get(f"{management_url}/models/{model}", headers=headers, timeout=10)
    return sorted(w["pid"] for w in got.json()[0]["workers"] if w["status"] == "READY" and w.get("pid"))


def kill_worker_under_load(url: str, headers: dict, management_url: str, management_headers: dict, model: str,
                           bodies: list[tuple[bytes, str]], clients: int, before_s: float, after_s: float,
                           timeout: float = 120) -> dict:
    """Light closed-loop load; `before_s` in, SIGKILL the model's worker; keep going `after_s`.

    Reports what the requests in flight got, and how long until a new worker answered.
    """
    (victim, *_) = worker_pids(management_url, management_headers, model)
    replies: list[tuple[float, Reply]] = []
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + before_s + after_s

    def client(offset: int):
        i = offset
        with requests.Session() as session:
            while time.monotonic() < deadline:
                sent = time.monotonic()
                reply = _send(session, url, bodies[i % len(bodies)], headers, "light", timeout)
                i += 1
                with lock:
                    replies.append((sent, reply))

    threads = [threading.Thread(target=client, args=(i * 5,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(before_s)
    killed_at = time.monotonic()
    psutil.Process(victim).kill()
    for t in threads:
        t.join()
    after = [(sent, r) for sent, r in replies if sent + r.latency_ms / 1000 >= killed_at]
    failed = [r for _, r in after if r.status != 200]
    answered_after = [sent + r.latency_ms / 1000 for sent, r in after if r.status == 200 and sent >= killed_at]
    new_pids = worker_pids(management_url, management_headers, model)
    return {
        "killed_pid": victim,
        "new_pids": new_pids,
        "requests_before_kill": sum(1 for sent, r in replies if sent + r.latency_ms / 1000 < killed_at),
        "failed": len(failed),
        "failed_statuses": dict(Counter(str(r.status) for r in failed)),
        "failed_non_json": sum(not r.json_ok for r in failed),
        "seconds_to_new_answer": (min(answered_after) - killed_at) if answered_after else None,
        "answered_after_kill": len(answered_after),
    }
