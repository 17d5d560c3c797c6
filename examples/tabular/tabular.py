"""A small tabular classifier served by marport: a JSON row of numbers in, a label and per-class scores out.

Written only against marport's model contract (docs/extending.md): `marport build --core tabular.py` packs it
beside the contract in the archive's package, so it imports the contract relatively.

    {"features": [5.1, 3.5, 1.4, 0.2]}                   -> {"label": ..., "scores": {...}}
    {"inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]} -> a list of those

The checkpoint folder holds `model.safetensors` (the weights) and `config.json` (feature names, labels, the
standardisation the network was trained with, hidden width).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file

from .bodies import as_json, check_body_size
from .contract import Model, Request, RequestError
from .settings import checkpoint_dir


def network(features: int, hidden: int, classes: int) -> torch.nn.Module:
    """The architecture; training (the example's test) builds the same one."""
    return torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes))


@dataclass
class Rows:
    """One request: its rows of features, and whether it asked for one answer (not a list)."""

    values: list[list[float]]
    single: bool


class Tabular(Model):
    defaults = {"max_body_bytes": 65536, "max_rows": 256}

    def load(self, model_dir: str) -> None:
        path = checkpoint_dir(model_dir)
        with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
        self.features, self.labels = list(config["features"]), list(config["labels"])
        self.mean = torch.tensor(config["mean"], dtype=self.dtype, device=self.device)
        self.scale = torch.tensor(config["scale"], dtype=self.dtype, device=self.device)
        self.net = network(len(self.features), int(config["hidden"]), len(self.labels))
        self.net.load_state_dict(load_file(os.path.join(path, "model.safetensors")))  # no unpickling
        self.net.to(device=self.device, dtype=self.dtype).eval()
        self.max_rows = int(self.settings["max_rows"])

    def read(self, request: Request) -> Rows:
        if request.media_type not in ("application/json", ""):
            raise RequestError(f"unsupported content type {request.media_type!r}; send application/json",
                               kind="unsupported_media_type", code=415)
        check_body_size(request.body, self.max_body_bytes)
        doc = as_json(request.body, request.content_type)
        if isinstance(doc, dict) and "features" in doc:
            return Rows([self.row(doc["features"], '"features"')], single=True)
        if isinstance(doc, dict) and isinstance(doc.get("inputs"), list) and doc["inputs"]:
            if len(doc["inputs"]) > self.max_rows:
                raise RequestError(f'"inputs" has {len(doc["inputs"])} rows; at most {self.max_rows} (max_rows)',
                                   kind="too_many_inputs", code=413)
            return Rows([self.row(r, f'"inputs"[{i}]') for i, r in enumerate(doc["inputs"])], single=False)
        raise RequestError('send {"features": [numbers]} or {"inputs": [[numbers], ...]}', kind="invalid_json_shape")

    def row(self, value: object, where: str) -> list[float]:
        """One row: exactly one finite number per feature."""
        if not isinstance(value, list) or len(value) != len(self.features):
            raise RequestError(f"{where} must be a list of {len(self.features)} numbers ({', '.join(self.features)})",
                               kind="invalid_row")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            raise RequestError(f"{where} must hold finite numbers only", kind="invalid_row")
        return [float(v) for v in value]

    def preprocess(self, inputs: list[Rows]) -> torch.Tensor:
        rows = torch.tensor([r for item in inputs for r in item.values], dtype=self.dtype, device=self.device)
        return (rows - self.mean) / self.scale

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(batch).float(), dim=-1).cpu()

    def postprocess(self, output: torch.Tensor, inputs: list[Rows]) -> list:
        scores, answers, at = output.tolist(), [], 0
        for item in inputs:
            rows = scores[at : at + len(item.values)]
            at += len(item.values)
            found = [{"label": self.labels[max(range(len(r)), key=r.__getitem__)], "scores": dict(zip(self.labels, r))}
                     for r in rows]
            answers.append(found[0] if item.single else found)
        return answers

    def figures(self, inputs: list[Rows], answers: list) -> dict:
        return {"Rows": sum(len(item.values) for item in inputs)}
