"""Where a text's time goes outside the model: `marport bench --only overhead`.

A tiny RoBERTa (hidden size 32, one layer: its forward pass costs next to nothing) makes
the handler's own work visible on a CPU, as a GPU makes it visible at full size. Both
handlers run in-process exactly as TorchServe's worker drives them: TorchServe's own
`Context` (with its metrics cache), `handle(batch of B requests, context)` with text/plain
bodies, logging on at INFO as in a worker. The model's calls are timed separately, so each
figure splits into microseconds per text inside the forward passes and outside them.

- marport: the archive's handler with the shipped model-config.yaml (device defaults included), and
  the same with `word_cache: false` (every text through the Rust tokenizer);
- the HF example (bench/hf_example.py): per-request tokenising padded to 150, fp32.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from marport.handlers.endpoint import freeze_loaded_objects
from marport.resources import model_config
from marport.sentiment_data import LABELS
from marport.workspace import current

from .plan import CORES, cpu_name
from .served import log
from .workloads import bench_dir, short_texts

BATCH = 256  # requests per handler call: what a busy GPU worker is handed (batchSize)
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=514, type_vocab_size=1)


def tiny_checkpoint(out: Path | None = None, tokenizer_dir: Path | None = None) -> Path:
    """A random one-layer RoBERTa with the demo model's tokenizer (or the one in `tokenizer_dir`) and labels."""
    out = out or bench_dir() / "roberta-tiny"
    if (out / "config.json").exists():
        return out
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or current().checkpoint("sentiment"))
    torch.manual_seed(0)
    config = RobertaConfig(**TINY, vocab_size=len(tokenizer), num_labels=len(LABELS),
                           id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
                           pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id)
    RobertaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


class TimedCalls:
    """Stands in for a model (or a tokenizer): forwards every call and attribute, adding up the seconds
    spent in calls of the object itself."""

    def __init__(self, inner: Any, device: torch.device):
        self.inner, self.device = inner, device
        self.seconds, self.calls = 0.0, 0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, *args, **kwargs):
        self._sync()
        started = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self._sync()
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return out

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def torchserve_context(model_dir: Path, config: dict | None, gpu: int | None):
    """TorchServe's Context as its model loader builds one, metrics cache included (a GPU machine
    without TorchServe installed gets the stand-in below)."""
    import importlib.resources

    try:
        from ts.context import Context
        from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    except ImportError:
        return StandInContext(str(model_dir), config, gpu)

    metrics = MetricsCacheYamlImpl(config_file_path=str(importlib.resources.files("ts") / "configs" / "metrics.yaml"))
    metrics.initialize_cache()
    return Context("sentiment", str(model_dir), {"model": {}}, BATCH, gpu, "0.12.0", metrics=metrics,
                   model_yaml_config=config)


class _Metrics:
    request_ids: Any = None

    def add_time(self, *args, **kwargs) -> None:
        pass

    def add_metric(self, *args, **kwargs) -> Any:
        return self

    def add_or_update(self, *args, **kwargs) -> None:
        pass


class _Headers:
    def __init__(self, headers: dict):
        self.headers, self.status, self.reason = headers, 200, None

    def get_request_property(self, key: str) -> Any:
        return self.headers.get(key)


class StandInContext:
    """The parts of ts.context.Context the handlers use, for hosts without TorchServe (the GPU machines)."""

    def __init__(self, model_dir: str, config: dict | None, gpu: int | None):
        self.system_properties = {"model_dir": model_dir, "gpu_id": gpu, "batch_size": BATCH}
        self.model_yaml_config, self.manifest, self.model_name = config, {"model": {}}, "sentiment"
        self.metrics, self.request_ids, self.request_processor = _Metrics(), {}, []

    def get_request_id(self, idx: int = 0) -> str | None:
        return self.request_ids.get(idx)

    def get_request_header(self, idx: int, key: str) -> Any:
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> dict:
        return self.request_processor[idx].headers

    def set_response_content_type(self, idx: int, value: str) -> None:
        pass

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.request_processor[idx].status, self.request_processor[idx].reason = code, phrase


def request_processors(context: Any, headers: list[dict]) -> list:
    try:
        from ts.context import RequestProcessor
    except ImportError:
        return [_Headers(h) for h in headers]
    return [RequestProcessor(h) for h in headers]


def drive(handler: Any, context: Any, texts: list[str], batch: int) -> float:
    """Seconds to answer `texts` in handler calls of `batch` requests, as TorchServe's service.predict calls them."""
    return sum(one_call(handler, context, texts[start : start + batch], start) for start in range(0, len(texts), batch))


def one_call(handler: Any, context: Any, texts: list[str], first_id: int = 0) -> float:
    """Seconds for one handler call answering `texts`, each a text/plain request, as TorchServe's service.predict
    makes it (request ids, headers and the metrics' ids set on the context first)."""
    headers = {"Content-Type": "text/plain", "body": {"content-type": "text/plain"}}
    rows = [{"body": t.encode()} for t in texts]
    context.request_ids = {i: f"req-{first_id + i}" for i in range(len(rows))}
    context.request_processor = request_processors(context, [dict(headers) for _ in rows])
    context.metrics.request_ids = context.request_ids
    started = time.perf_counter()
    answers = handler.handle(rows, context)
    seconds = time.perf_counter() - started
    assert len(answers) == len(rows)
    return seconds


def measure(handlers: dict[str, tuple], texts: list[str], batch: int, reps: int) -> dict:
    """Median microseconds per text through `handle` for each handler, in the model's calls, in the
    tokenizer's and in the rest (the handler's own work); 'outside' is everything but the model.

    Each handler answers all the texts in a row, call after call, as a worker would (taking turns call by call was
    tried: it put the essentials yardstick above the handler it is a subset of, so a figure depended on the
    neighbours). The order of the handlers rotates from one repetition to the next, so that a slower spell of the
    machine falls on each of them in turn."""
    runs: dict[str, list] = {name: [] for name in handlers}
    names = list(handlers)
    with contextlib.redirect_stdout(io.StringIO()):  # the example prints its logits, as it does into a worker's log
        for handler, _, context in handlers.values():
            drive(handler, context, texts[: 2 * batch], batch)  # first-call paths, untimed
        for rep in range(reps):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                handler, timers, context = handlers[name]
                for timer in timers:
                    timer.seconds, timer.calls = 0.0, 0
                total = drive(handler, context, texts, batch)
                runs[name].append((total, timers[0].seconds, timers[1].seconds, timers[0].calls))
    per_text = 1e6 / len(texts)
    out = {}
    for name, rows in runs.items():
        total, forward, tokenizing, calls = (statistics.median(r[i] for r in rows) for i in range(4))
        out[name] = {"us_per_text": total * per_text, "forward_us_per_text": forward * per_text,
                     "outside_us_per_text": (total - forward) * per_text, "tokenizer_us_per_text": tokenizing * per_text,
                     "handler_us_per_text": (total - forward - tokenizing) * per_text,
                     "forward_calls_per_handle": calls / -(-len(texts) // batch)}
    return out


class StubModel:
    """Stands in for a sequence classifier: logits for as many rows as it is given, at once. With it, a handler's
    time is its own Python and tokenizer, with no forward passes between its calls."""

    def __init__(self, labels: int):
        self.labels = labels

    def __call__(self, *args, **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        ids = args[0] if args else kwargs["input_ids"]
        return SequenceClassifierOutput(logits=torch.linspace(-1, 1, ids.shape[0] * self.labels).view(-1, self.labels))


def measure_stubbed(handlers: dict[str, tuple], texts: list[str], batch: int, labels: int, reps: int) -> dict:
    """Microseconds per text through `handle` with each handler's model replaced by a StubModel (its timer's inner
    call), after one untimed pass: the median of `reps` passes, and of those the tokenizing step's share."""
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for name, (handler, timers, context) in handlers.items():
            model, timers[0].inner = timers[0].inner, StubModel(labels)
            try:
                drive(handler, context, texts, batch)
                runs = []
                for _ in range(reps):
                    timers[1].seconds = 0.0
                    runs.append((drive(handler, context, texts, batch), timers[1].seconds))
            finally:
                timers[0].inner = model
            total, tokenizing = (statistics.median(r[i] for r in runs) for i in range(2))
            out[name] = {"stubbed_us_per_text": total * 1e6 / len(texts),
                         "stubbed_tokenizer_us_per_text": tokenizing * 1e6 / len(texts)}
    return out


def ours(model_dir: Path, gpu: int | None, settings: dict | None = None, timed: bool = True) -> tuple[Any, tuple, Any]:
    """The archive's handler with the shipped model-config.yaml, as `marport build --device` packs it for
    where it runs (a GPU archive when given a GPU); `settings` override its handler section. `timed`
    wraps the model in a timer (which waits for the GPU at each call: not for throughput) and times the
    core's tokenising step, once per handler call (word cache and Rust tokenizer together)."""
    from marport.build import for_device
    from marport.handlers.sentiment_handler import SentimentHandler

    config = yaml.safe_load(for_device(model_config("sentiment").read_text(), "cpu" if gpu is None else "gpu"))
    config["handler"].update(settings or {})
    context = torchserve_context(model_dir, config, gpu)
    handler = SentimentHandler()
    handler.initialize(context)
    core = handler.model
    timers = TimedCalls(core.model, core.device), TimedCalls(None, core.device)
    if timed:
        core.model = timers[0]
        time_tokenizing(core, timers[1])
    return handler, timers, context


def time_tokenizing(core: Any, timer: TimedCalls) -> None:
    """Add the seconds `core` spends in sentiment.tokenize (called once per handler call) to `timer`:
    the module's function is wrapped once, and each core's calls go to its own timer."""
    from marport.handlers import sentiment

    if not hasattr(sentiment.tokenize, "timers"):
        real = sentiment.tokenize

        def timed(model, texts, offsets=False):
            started = time.perf_counter()
            try:
                return real(model, texts, offsets)
            finally:
                if id(model) in timed.timers:
                    timed.timers[id(model)].seconds += time.perf_counter() - started

        timed.timers = {}  # type: ignore[attr-defined]
        sentiment.tokenize = timed
    sentiment.tokenize.timers[id(core)] = timer  # type: ignore[attr-defined]


class EssentialsOnly:
    """A yardstick, not a handler anyone should serve: the per-text work no sentiment handler can skip (decode the
    body, tokenise, pad, run the model, one answer and its JSON, the response's content type) through the same
    core functions, without the checks, the isolation, the options, the metrics or the log lines. How far a
    handler's outside-the-model time can fall in Python on this machine."""

    def __init__(self, loaded: tuple[Any, tuple, Any]):
        handler, self.timers, self.context = loaded
        self.core = handler.model

    def handle(self, data: list, context: Any) -> list[str]:
        from marport.handlers import sentiment
        from marport.handlers.serving_common import to_json

        texts = [row["body"].decode() for row in data]
        ids, truncated, _ = sentiment.tokenize(self.core, texts)
        requests = [sentiment.TextRequest([t], True, [i], [c], False) for t, i, c in zip(texts, ids, truncated)]
        answers = [to_json(answer) for answer in sentiment.predict(self.core, requests)]
        for idx in range(len(answers)):
            context.set_response_content_type(idx, "application/json")
        return answers


class BareMinimum(EssentialsOnly):
    """A second yardstick, lower still: the same per-text work written out in a few lines, without the core's
    request and answer objects either. The texts are tokenised by the core's tokenize (word cache and Rust
    tokenizer: the tokenizing column), grouped by its micro-batching into one padded matrix whose slices go to the
    model as they are, one softmax, and each answer formatted straight into JSON text. Good only for these inputs
    (no truncation, review band or explanation): what a text costs outside the model here when nothing is kept."""

    def handle(self, data: list, context: Any) -> list[str]:
        import json

        from marport.handlers import sentiment

        core = self.core
        texts = [row["body"].decode() for row in data]
        ids, _, _ = sentiment.tokenize(core, texts)
        groups = sentiment.micro_batches([len(i) for i in ids], core.limits.batch_tokens,
                                         core.limits.min_padding_efficiency)
        padded, attention, sizes = sentiment.padded_matrix(ids, groups, core.tokenizer.pad_token_id or 0)
        ids_t, mask_t = torch.from_numpy(padded), torch.from_numpy(attention)
        logits, start = [], 0
        with torch.inference_mode():
            for rows in groups:
                end, width = start + len(rows), sizes[start + len(rows) - 1]
                logits.append(core.model(input_ids=ids_t[start:end, :width], attention_mask=mask_t[start:end, :width])
                              .logits.float())
                start = end
            found = torch.softmax(torch.cat(logits), dim=-1)
        probs = torch.empty_like(found)
        probs[torch.tensor([r for rows in groups for r in rows])] = found
        names = [json.dumps(label) for label in core.labels]
        template = ('{"label":%s,"score":%r,"scores":{' + ",".join(f"{n}:%r" for n in names) + "}}")
        answers = [template % (names[top], row[top], *row) for row, top in zip(probs.tolist(), probs.argmax(1).tolist())]
        for idx in range(len(answers)):
            context.set_response_content_type(idx, "application/json")
        return answers


BEFORE_ISSUE_21 = "5c3f283"  # the last commit before issue 21's work: the baseline its overhead goal counts from


def before_handlers() -> Path | None:
    """The handler modules as they were before issue 21, taken from git into the bench folder (None where the
    history is not at hand, as in a shallow clone or an installed wheel)."""
    import subprocess

    out = bench_dir() / f"handlers-{BEFORE_ISSUE_21}"
    if (out / "sentiment_handler.py").exists():
        return out
    repo = Path(__file__).resolve().parents[1]
    try:
        archive = subprocess.run(["git", "-C", str(repo), "archive", BEFORE_ISSUE_21, "handlers"], check=True,
                                 capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    import tarfile

    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                member.name = member.name.removeprefix("handlers/")
                tar.extract(member, out, filter="data")
    return out


def ours_before(model_dir: Path, gpu: int | None, settings: dict | None = None) -> tuple[Any, tuple, Any] | None:
    """The handler as it was before issue 21, with that commit's own model-config.yaml, in this process (its
    modules import each other by bare name, as TorchServe unpacked them then), or None if it cannot be had."""
    import importlib
    import sys

    folder = before_handlers()
    if folder is None:
        return None
    clash = [m for m in sys.modules if (folder / f"{m}.py").exists()
             and not str(getattr(sys.modules[m], "__file__", "")).startswith(str(folder))]
    if clash:
        log(f"  the pre-issue-21 handler is skipped: modules named {clash} are already imported")
        return None
    sys.path.insert(0, str(folder))
    entry = importlib.import_module("sentiment_handler")
    config = yaml.safe_load((folder / "config" / "sentiment.yaml").read_text())
    config["handler"].update(settings or {})
    context = torchserve_context(model_dir, config, gpu)
    handler = entry.SentimentHandler()
    handler.initialize(context)
    core = handler.model
    timers = TimedCalls(core.model, core.device), TimedCalls(core.tokenizer, core.device)
    core.model, core.tokenizer = timers
    return handler, timers, context


def example(model_dir: Path, gpu: int | None, timed: bool = True) -> tuple[Any, tuple, Any]:
    from .hf_example import ExampleHandler

    context = torchserve_context(model_dir, None, gpu)
    handler = ExampleHandler()
    handler.initialize(context)
    timers = TimedCalls(handler.model, handler.device), TimedCalls(handler.tokenizer, handler.device)
    if timed:
        handler.model, handler.tokenizer = timers
    return handler, timers, context


@contextlib.contextmanager
def worker_logging():
    """INFO logging into a sink, as a TorchServe worker logs (to its stdout, read by the frontend)."""
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    root.handlers[:] = [logging.StreamHandler(io.StringIO())]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


def overhead_bench(plan, gpu: int | None = None, texts: list[str] | None = None) -> dict:
    log("handler overhead: microseconds per text outside the model (tiny model, B = 256)")
    checkpoint = tiny_checkpoint()
    texts = texts or short_texts(768 if plan.quick else 3072)
    reps = 1 if plan.quick else 11
    with worker_logging():
        handlers = {"marport": ours(checkpoint, gpu), "marport_no_word_cache": ours(checkpoint, gpu, {"word_cache": False}),
                    "hf_example": example(checkpoint, gpu)}
        essentials = EssentialsOnly(ours(checkpoint, gpu))
        handlers["essentials"] = (essentials, essentials.timers, essentials.context)
        bare = BareMinimum(ours(checkpoint, gpu))
        handlers["bare"] = (bare, bare.timers, bare.context)
        before = None if plan.quick else ours_before(checkpoint, gpu)  # quick runs (the tests) keep their process clean
        if before is not None:
            handlers["before"] = before
        # What each of our workers does after its load (handler.gc_freeze), done once here for every handler
        # loaded in this process, so that no handler's full collections walk the others' models.
        freeze_loaded_objects()
        result: dict = {"batch": BATCH, "texts": len(texts), "model": TINY, "reps": reps, "cpu": cpu_name(),
                        "cores": CORES,
                        "threads": torch.get_num_threads(), **measure(handlers, texts, BATCH, reps)}
        for name, stubbed in measure_stubbed(handlers, texts, BATCH, len(LABELS), 5 if reps > 1 else 1).items():
            result[name].update(stubbed)
        result["typographic"] = typographic_tokenizing(handlers["marport"][0].model, texts, 5 if reps > 1 else 1)
    for name in handlers:
        log(f"  {name}: {result[name]['us_per_text']:.0f} us/text, {result[name]['outside_us_per_text']:.0f} outside "
            f"the model ({result[name]['tokenizer_us_per_text']:.0f} tokenizing)")
    result["outside_ratio"] = result["hf_example"]["outside_us_per_text"] / result["marport"]["outside_us_per_text"]
    result["cpu_regression"] = None if plan.quick else regression_bench(plan)
    return result


TYPOGRAPHIC = str.maketrans({"'": "\u2019"})  # the apostrophe as phones and word processors type it (’)


def typographic_tokenizing(core: Any, texts: list[str], reps: int) -> dict:
    """The tokenizing step on the same texts with typographic apostrophes, which makes many of them non-ASCII:
    microseconds per text with the word cache (its first pass over them, then warm) and through the Rust tokenizer
    alone, in calls of BATCH texts."""
    import dataclasses

    from marport.handlers import sentiment

    typed = [t.translate(TYPOGRAPHIC) for t in texts]

    def seconds(model: Any) -> float:
        started = time.perf_counter()
        for start in range(0, len(typed), BATCH):
            sentiment.tokenize(model, typed[start : start + BATCH])
        return time.perf_counter() - started

    per_text = 1e6 / len(typed)
    first = seconds(core) * per_text
    rust = dataclasses.replace(core, words=None)
    warm, alone = (statistics.median(seconds(m) for _ in range(reps)) * per_text for m in (core, rust))
    return {"non_ascii_share": sum(not t.isascii() for t in typed) / len(typed), "cache_first_us_per_text": first,
            "cache_us_per_text": warm, "rust_us_per_text": alone}


REGRESSION_BATCH = 16  # requests per handler call: the CPU archive's batchSize
REGRESSION_PRECISIONS = ("auto", "int8")  # the shipped default (bf16 here) and int8


def regression_bench(plan) -> dict | None:
    """No regression on the CPU: the roberta-base-size model through `handle` at the CPU archive's batchSize, this
    handler against the one before issue 21, each with its own shipped settings and with int8 (texts/s, medians).

    One precision at a time (loading int8 sets the process's torch threads to 1, as it does in a worker), the two
    handlers taking turns in alternating order after a whole untimed pass each (the first timed pass ran up to 15%
    slow); the ratio is the median of the passes' paired ratios, which a slow spell of the machine moves less than
    it moves either handler's median. None where the pre-issue-21 handler cannot be had (no git history).
    """
    from .workloads import realsize_checkpoint

    log("no regression on the CPU: roberta-base size, B = 16, this handler against the one before issue 21")
    checkpoint, texts = realsize_checkpoint(), short_texts(64 if plan.quick else 192, seed=3)
    reps = 1 if plan.quick else 8
    result: dict = {"batch": REGRESSION_BATCH, "texts": len(texts), "reps": reps, "cpu": cpu_name(), "cores": CORES}
    with worker_logging():
        for precision in REGRESSION_PRECISIONS:
            before = ours_before(checkpoint, None, {"precision": precision})
            if before is None:
                return None
            pair = {"before": before, "marport": ours(checkpoint, None, {"precision": precision}, timed=False)}
            freeze_loaded_objects()
            seconds: dict[str, list[float]] = {name: [] for name in pair}
            for handler, _, context in pair.values():
                drive(handler, context, texts, REGRESSION_BATCH)
            for rep in range(reps):
                for name in (("before", "marport") if rep % 2 == 0 else ("marport", "before")):
                    handler, _, context = pair[name]
                    seconds[name].append(drive(handler, context, texts, REGRESSION_BATCH))
            for name, runs in seconds.items():
                result[f"{name}_{precision}"] = len(texts) / statistics.median(runs)
            result[f"ratio_{precision}"] = statistics.median(b / m for b, m in zip(seconds["before"], seconds["marport"]))
            result[f"threads_{precision}"] = torch.get_num_threads()
            log(f"  {precision}: {result[f'marport_{precision}']:.1f} texts/s against "
                f"{result[f'before_{precision}']:.1f} before issue 21 ({result[f'ratio_{precision}']:.2f}x)")
            del pair, before
    return result
