"""Each model kind in one place: its handler entry and core, its modules, model-config.yaml, trainer, sample request
and what SageMaker's PyTorch container must pip-install for it. The tools and the Makefile read it from here."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from marport import resources
from marport.workspace import Workspace

# Packed into every archive: the contract, the endpoint and what it drives, the TorchServe adapter.
COMMON_MODULES = ("names.py", "contract.py", "bodies.py", "settings.py", "isolation.py", "placement.py", "review.py",
                  "operator_metrics.py", "s3_input.py", "endpoint.py", "torchserve_adapter.py")


class Trainer(Protocol):
    """What a model's training module offers the `marport train` command."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace, out: Path) -> None:
        """Train from the parsed options; write a save_pretrained-style checkpoint to `out`."""

    def build_default(self, out: Path) -> None:
        """The demo checkpoint, with default settings (what `marport build MODEL` packs)."""


@dataclass(frozen=True)
class ModelKind:
    name: str
    entry: str  # the TorchServe --handler file
    core: str  # the model core module (preprocess / forward / postprocess)
    trainer_module: str
    sample: Callable[[Workspace], str | Path | None]  # text, or a file to send; None if not built yet
    container_requirements: tuple[str, ...]  # what SageMaker's PyTorch 2.6 image lacks
    extra_modules: tuple[str, ...] = ()  # other flat modules the core imports
    summary: str = ""
    # Repo files (globs) the demo checkpoint is trained from: the Makefile retrains when one changes.
    training_inputs: tuple[str, ...] = ()
    source: Path | None = None  # a model of one's own: its core module's file (custom_kind)
    config_file: Path | None = None  # and its model-config.yaml

    @property
    def modules(self) -> list[str]:
        return [*COMMON_MODULES, *self.extra_modules, self.core, self.entry]

    @property
    def config(self) -> Path:
        return self.config_file or resources.model_config(self.name)

    @property
    def trainer(self) -> Trainer:
        return importlib.import_module(self.trainer_module)


def _synthetic_recording(workspace: Workspace) -> Path | None:
    return next(iter(sorted((workspace.build / "respiratory" / "synthetic").glob("*.wav"))), None)


# Exact pins, as `make test-container` tests them beside SageMaker's torch 2.6: a range would let in a release without it.
MODELS = {
    "sentiment": ModelKind(
        name="sentiment",
        summary="RoBERTa-style text classifier: text in, label and per-class scores out",
        entry="sentiment_handler.py",
        core="sentiment.py",
        extra_modules=("text_input.py", "int8.py", "text_attributions.py"),
        trainer_module="marport.train_sentiment",
        training_inputs=("marport/train_sentiment.py", "marport/sentiment_data.py", "marport/pretrained.py",
                         "marport/model_card.py", "marport/reproducible.py",
                         "marport/data/sentiment/marport/*.tsv"),
        sample=lambda _: "The staff were friendly and breakfast was generous",
        container_requirements=("transformers==5.24.0", "tokenizers==0.23.3", "safetensors==0.8.0",
                                "onnxruntime==1.32.0", "onnx==1.23.2", "captum==0.9.0", "orjson==3.13.0"),
    ),
    "respiratory": ModelKind(
        name="respiratory",
        summary="respiratory-sound CNN: a cough or breath recording in, P(unhealthy) out",
        entry="respiratory_handler.py",
        core="respiratory.py",
        extra_modules=("audio_input.py", "respiratory_net.py", "occlusion.py"),
        trainer_module="marport.train_respiratory",
        training_inputs=("marport/train_respiratory.py", "marport/synth_audio.py", "marport/reproducible.py",
                         "handlers/respiratory_net.py"),
        sample=_synthetic_recording,
        container_requirements=("soundfile==0.14.0", "soxr==1.1.0", "safetensors==0.8.0", "orjson==3.13.0"),
    ),
}


MANIFEST = "MAR-INF/MANIFEST.json"  # torch-model-archiver's manifest, naming the archive's handler


def custom_kind(name: str, source: Path | None = None, config: Path | None = None) -> ModelKind:
    """A model of one's own: one module written against handlers/contract.py (docs/extending.md)."""
    return ModelKind(name=name, summary=f"a model of your own ({source.name if source else name})",
                     entry=f"{name}_handler.py", core=f"{name}.py", trainer_module="",
                     sample=lambda _: None, container_requirements=(),
                     source=source, config_file=config)


def for_entry(entry: str) -> ModelKind:
    """The kind whose handler is `entry` (as an archive's MANIFEST names it); any other marport entry
    (`NAME_handler.py`) is a model of one's own."""
    for kind in MODELS.values():
        if kind.entry == Path(entry).name:
            return kind
    if not Path(entry).name.endswith("_handler.py"):
        raise KeyError(f"{entry} is not a marport handler (NAME_handler.py)")
    return custom_kind(Path(entry).name.removesuffix("_handler.py"))


def for_archive(mar: Path) -> ModelKind:
    """Which kind a built .mar holds, from the handler its manifest names (any --name)."""
    import json
    import zipfile

    with zipfile.ZipFile(mar) as archive:
        if MANIFEST not in archive.namelist():
            raise ValueError(f"{mar} has no {MANIFEST}: not a model archive")
        handler = json.loads(archive.read(MANIFEST))["model"]["handler"]
    try:
        return for_entry(handler)
    except KeyError as err:
        raise ValueError(f"{mar}: {err.args[0]}") from None


def container_requirements() -> list[str]:
    """Every model's container pins, once each (`make test-container` installs them)."""
    return sorted({req for kind in MODELS.values() for req in kind.container_requirements})


def make_rules() -> str:
    """The Makefile's per-model rules (it includes them from build/models.mk): each demo checkpoint from its
    training inputs, each archive from its checkpoint and the handlers. Paths are the workspace's defaults."""
    workspace = Workspace(Path("."))
    lines = ["# Generated from marport/registry.py by `python -m marport.registry --make`; do not edit.",
             f"MODELS := {' '.join(MODELS)}"]
    for name, kind in MODELS.items():
        checkpoint = workspace.checkpoint(name) / "config.json"
        inputs = " ".join(f"$(wildcard {p})" if "*" in p else p for p in kind.training_inputs)
        lines += ["", f"{checkpoint}: {inputs} | $(STAMP)", f"\t$(MARPORT) train {name}",
                  f"model_store/{name}.mar: {checkpoint} $(HANDLER_FILES) marport/build.py marport/registry.py",
                  f"\t$(MARPORT) build {name}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m marport.registry: the container pins, one a line; --make: the Makefile's rules
    import sys

    if sys.argv[1:] == ["--make"]:
        print(make_rules(), end="")
    else:
        print("\n".join(container_requirements()))
