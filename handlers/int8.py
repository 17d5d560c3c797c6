"""int8 sentiment inference through ONNX Runtime's dynamic quantisation (int8 weights, activations quantised per batch),
behind the torch model's call: `OnnxClassifier(...)(input_ids=..., attention_mask=...).logits`. `marport build`
exports the graph once into the archive; a worker whose archive lacks it does so at load."""

from __future__ import annotations

import logging
import os
import tempfile
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

INT8_FILE = "model.int8.onnx"
OPSET = 17


def export_int8(checkpoint: str, out: str | None = None) -> str:
    """checkpoint/ -> checkpoint/model.int8.onnx (fp32 graph exported, weights quantised to int8)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModelForSequenceClassification

    out = out or os.path.join(checkpoint, INT8_FILE)
    # Eager attention exports as plain MatMul/Softmax, which ONNX Runtime fuses and quantises
    # better than the scaled-dot-product export (docs/devices.md).
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, attn_implementation="eager").eval()
    model.config.return_dict = False  # a plain tuple traces cleanly
    example = torch.ones(2, 16, dtype=torch.long)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = os.path.join(tmp, "model.onnx")
        kwargs: dict[str, Any] = dict(
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask")}
            | {"logits": {0: "batch"}},
            opset_version=OPSET,
        )
        try:  # torch >= 2.5 defaults to the dynamo exporter on request; the TorchScript one is what 2.6 runs
            torch.onnx.export(model, (example, example), fp32, dynamo=False, **kwargs)
        except TypeError:
            torch.onnx.export(model, (example, example), fp32, **kwargs)
        quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, per_channel=True)
    return out


class OnnxClassifier:
    """An ONNX Runtime session that answers like a Hugging Face sequence classifier."""

    def __init__(self, path: str, config, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.config = config

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        feeds = {"input_ids": input_ids.numpy().astype(np.int64), "attention_mask": attention_mask.numpy().astype(np.int64)}
        (logits,) = self.session.run(["logits"], feeds)
        return SimpleNamespace(logits=torch.from_numpy(logits))


def load_int8(checkpoint: str, config, threads: int) -> OnnxClassifier:
    """The session gets the worker's threads; torch keeps one, since it only pads and takes softmaxes here:
    two thread pools spinning on the same cores (torch's OpenMP, ONNX Runtime's) slow each other down."""
    torch.set_num_threads(1)
    path = os.path.join(checkpoint, INT8_FILE)
    if not os.path.exists(path):
        log.info("%s not in the archive: exporting and quantising now (done once per worker)", INT8_FILE)
        path = export_int8(checkpoint, os.path.join(tempfile.mkdtemp(prefix="marport-int8-"), INT8_FILE))
    return OnnxClassifier(path, config, threads)
