"""The benchmark harness's own arithmetic (speed itself is measured by `make bench`, never here)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from marport.bench.loadgen import LoadResult, client_core
from marport.bench.sentiment_bench import serving_overhead_ms


def test_each_served_request_is_paired_with_the_forward_of_its_own_text():
    forward = {"per_text_ms": [50.0, 100.0]}
    runs = [LoadResult(1, 2, 1.0, [55.0, 103.0], 0, []), LoadResult(1, 2, 1.0, [52.0, 110.0], 0, [])]
    got = serving_overhead_ms(runs, forward)
    extra = [5.0, 3.0, 2.0, 10.0]
    assert got["requests"] == 4
    assert got["p50_ms"] == pytest.approx(np.percentile(extra, 50))
    assert got["p99_ms"] == pytest.approx(np.percentile(extra, 99))


def test_clients_run_on_one_core_and_the_caller_gets_every_core_back():
    allowed = os.sched_getaffinity(0)
    seen = {}
    with client_core() as core:
        thread = threading.Thread(target=lambda: seen.update(mask=os.sched_getaffinity(0)))
        thread.start()
        thread.join()
    assert seen["mask"] == {core} and core in allowed
    assert os.sched_getaffinity(0) == allowed


def test_overhead_step_splits_each_handlers_time_consistently():
    """`marport bench --only overhead` on a quick plan: both handlers answer through `handle`, and each
    figure adds up (the model's calls + the tokenizer's + the handler's own = the whole)."""
    from marport.bench.overhead import overhead_bench
    from marport.bench.plan import QUICK
    from marport.bench.report import overhead

    result = overhead_bench(QUICK)
    for name in ("marport", "hf_example"):
        r = result[name]
        assert r["forward_us_per_text"] > 0 and r["tokenizer_us_per_text"] > 0
        assert abs(r["outside_us_per_text"] - (r["us_per_text"] - r["forward_us_per_text"])) < 1e-6
        assert abs(r["handler_us_per_text"] - (r["outside_us_per_text"] - r["tokenizer_us_per_text"])) < 1e-6
        assert 0 < r["stubbed_tokenizer_us_per_text"] < r["stubbed_us_per_text"]  # the model stubbed: still timed apart
    assert result["hf_example"]["forward_calls_per_handle"] == 1  # it pads a whole call to 150 tokens
    typed = result["typographic"]
    assert 0 < typed["non_ascii_share"] <= 1 and typed["cache_us_per_text"] > 0 and typed["rust_us_per_text"] > 0
    report = overhead({"overhead": result})
    assert "Handler overhead" in report and "typographic apostrophes" in report


def test_the_yardsticks_answer_as_the_handler_does():
    """The overhead step's yardsticks are only worth their figures if they do the handler's work: same labels,
    same scores, strict JSON, for the same requests."""
    import json

    from marport.bench.overhead import BareMinimum, EssentialsOnly, ours, request_processors, tiny_checkpoint
    from marport.bench.workloads import short_texts

    loaded = ours(tiny_checkpoint(), None, timed=False)
    handler, _, context = loaded
    texts = short_texts(48, seed=5)
    rows = [{"body": t.encode()} for t in texts]
    context.request_ids = {i: f"r{i}" for i in range(len(rows))}
    context.request_processor = request_processors(context, [{"Content-Type": "text/plain"} for _ in rows])
    expected = [json.loads(a) for a in handler.handle(rows, context)]
    def strict(constant: str):
        raise ValueError(f"{constant} is not JSON")

    for yardstick in (EssentialsOnly(loaded), BareMinimum(loaded)):
        got = [json.loads(a, parse_constant=strict) for a in yardstick.handle(rows, context)]
        assert [g["label"] for g in got] == [e["label"] for e in expected], type(yardstick).__name__
        for g, e in zip(got, expected):
            assert g["scores"].keys() == e["scores"].keys() and g["score"] == pytest.approx(e["score"], abs=1e-6)
            assert all(g["scores"][k] == pytest.approx(v, abs=1e-6) for k, v in e["scores"].items())


def test_gpu_side_by_side_harness_runs_on_the_cpu(tmp_path, monkeypatch):
    """The GPU step's harness (worker processes from a barrier, the bare model, both handlers), run on the
    CPU with the tiny model through the entry point a GPU machine runs (`--rehearse`), then recorded as a GPU
    machine's result is: CI has no GPU, so this is what keeps the GPU step from rotting."""
    import argparse
    import json
    import shutil

    from marport.bench.gpu_serving import GPU_SWEEP, main
    from marport.bench.report import GPU_OVER_HF_GOAL, GPU_SHARE_GOAL, gpu_serving
    from marport.bench.run import results_file, run
    from marport.workspace import Workspace

    out = tmp_path / "device" / "gpu_serving.json"
    main(["--rehearse", "--out", str(out)])
    result = json.loads(out.read_text())
    workers = result["workers_per_gpu"]
    for key in ("bare_bf16", "marport_1_worker", f"marport_{workers}_workers", "hf_example"):
        assert result[key] > 0
    workers_tried, settings = GPU_SWEEP[0]
    assert [[row["workers"], row["settings"]] for row in result["sweep"]] == [list(GPU_SWEEP[0])]
    assert result["sweep"][0]["texts_per_s"] > 0
    text = gpu_serving(result)
    assert "share of the bare model" in text
    (key, value), = settings.items()
    assert f"marport, {workers_tried} worker(s), `{key}: {value}`" in text
    # The goals' verdicts follow the figures (the goals are report.py's constants, nowhere else).
    assert f"(goal {GPU_OVER_HF_GOAL}x: {'met' if result['over_hf_example'] >= GPU_OVER_HF_GOAL else 'missed'})" in text
    assert f"{'met' if result['share_of_bare'] >= GPU_SHARE_GOAL else 'missed'})." in text

    # `marport bench --only gpu --gpu-result FILE` merges it into the results and the report, in a workspace of
    # its own here (the repository's BENCHMARKS.md stays as it is).
    recorded = results_file()
    workspace = Workspace.at(tmp_path / "workspace")
    monkeypatch.setattr("marport.workspace._current", workspace)
    (workspace.root / "bench" / "results").mkdir(parents=True)
    shutil.copy(recorded, results_file())
    run(argparse.Namespace(out=None, only="gpu", gpu_result=out, report_only=False, quick=False))
    assert json.loads(results_file().read_text())["gpu_serving"] == result
    assert "did not finish" not in gpu_serving(result)
    # A run cut short (its file is written after every row): in the sweep, recorded and said; before the goals'
    # rows were all measured, refused.
    assert "1 of the 2 swept settings did not finish" in gpu_serving({**result, "sweep_planned": 2})
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({k: v for k, v in result.items() if k not in ("over_hf_example", "share_of_bare")}))
    with pytest.raises(SystemExit, match="stopped before the goals' rows were measured"):
        run(argparse.Namespace(out=None, only="gpu", gpu_result=partial, report_only=False, quick=False))
    assert json.loads(results_file().read_text())["gpu_serving"] == result
    assert f"#### Serving at B = 256 on a GPU (cpu, {result['date']})" in (workspace.root / "BENCHMARKS.md").read_text()
