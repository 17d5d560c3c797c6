"""Build a model's `.mar`: its checkpoint, its handler modules and its model-config.yaml.

    python -m marport.build sentiment                     # demo weights, trained here
    python -m marport.build sentiment --checkpoint DIR    # any HF checkpoint saved with save_pretrained
    python -m marport.build respiratory

Everything the handler imports is packed flat into the archive, so the served model
never imports this project from site-packages.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from marport import BUILD_DIR, HANDLERS_DIR, MODEL_STORE, __version__, use_handlers

use_handlers()
from serving_common import CHECKPOINT_SUBDIR  # noqa: E402  (the handlers' own name for it)

COMMON_MODULES = ("serving_common.py", "isolation.py", "placement.py", "torchserve_adapter.py")
DEMO_CHECKPOINT = "demo-checkpoint"  # build/<model>/demo-checkpoint, as the Makefile builds it


def _default_sentiment(out: Path) -> None:
    from marport.train_sentiment import main

    main(["--out", str(out)])


def _default_respiratory(out: Path) -> None:
    from marport.train_respiratory import build_default

    build_default(out)


@dataclass(frozen=True)
class ArchiveSpec:
    entry: str  # the TorchServe --handler file
    core: str  # the model core module
    default_checkpoint: Callable[[Path], None]
    extra_modules: tuple[str, ...] = ()  # other flat modules the core imports

    @property
    def modules(self) -> list[str]:
        return [*COMMON_MODULES, *self.extra_modules, self.core, self.entry]


MODELS = {
    "sentiment": ArchiveSpec("sentiment_handler.py", "sentiment.py", _default_sentiment, ("int8.py",)),
    "respiratory": ArchiveSpec("respiratory_handler.py", "respiratory.py", _default_respiratory),
}


def model_config_path(model: str) -> Path:
    return HANDLERS_DIR / "config" / f"{model}.yaml"


def stage(model: str, checkpoint: Path, workdir: Path, precision: str | None = None) -> Path:
    """Lay out the archive's data: pack/checkpoint/ and model-config.yaml.

    torch-model-archiver copies the *contents* of a folder given as an extra file
    into the archive root, so the checkpoint goes one level down, in pack/.
    `precision` replaces handler.precision in the packed model-config.yaml; an int8
    sentiment archive gets its ONNX graph made here, once, instead of at every worker start.
    """
    staged = workdir / "stage"
    if staged.exists():
        shutil.rmtree(staged)
    target = staged / "pack" / CHECKPOINT_SUBDIR
    target.mkdir(parents=True)
    for item in sorted(checkpoint.iterdir()):
        if item.is_file():
            shutil.copy2(item, target / item.name)
    config_text = model_config_path(model).read_text()
    if precision:
        config_text = _with_precision(config_text, precision)
    (staged / "model-config.yaml").write_text(config_text)
    import yaml

    if (yaml.safe_load(config_text).get("handler") or {}).get("precision") == "int8":
        from int8 import INT8_FILE, export_int8

        print(f"      exporting the int8 ONNX graph ({INT8_FILE})", flush=True)
        export_int8(str(target))
    return staged


def _with_precision(config_text: str, precision: str) -> str:
    """The yaml text with handler.precision set, its comments kept."""
    import re

    line = re.compile(r"^(\s+precision:\s*)\S+", re.MULTILINE)
    if line.search(config_text):
        return line.sub(lambda m: m.group(1) + precision, config_text, count=1)
    return config_text.replace("handler:\n", f"handler:\n  precision: {precision}\n", 1)


def archive(model: str, staged: Path, export_dir: Path, name: str) -> Path:
    spec = MODELS[model]
    extra = [str(HANDLERS_DIR / m) for m in spec.modules if m != spec.entry]
    extra.append(str(staged / "pack"))
    export_dir.mkdir(parents=True, exist_ok=True)
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    cmd = [
        str(archiver if archiver.exists() else "torch-model-archiver"),
        "--model-name", name,
        "--version", __version__,
        "--handler", str(HANDLERS_DIR / spec.entry),
        "--extra-files", ",".join(extra),
        "--config-file", str(staged / "model-config.yaml"),
        "--export-path", str(export_dir),
        "--force",
    ]
    mar = export_dir / f"{name}.mar"
    mar.unlink(missing_ok=True)
    _run_with_progress(cmd, mar, _staged_bytes(spec, staged))
    return mar


def _staged_bytes(spec: ArchiveSpec, staged: Path) -> int:
    files = [p for p in (staged / "pack").rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) + sum((HANDLERS_DIR / m).stat().st_size for m in spec.modules)


def _run_with_progress(cmd: list[str], mar: Path, total: int) -> None:
    """torch-model-archiver prints nothing while it deflates; show the archive growing."""
    from tqdm import tqdm

    with subprocess.Popen(cmd) as proc, tqdm(total=total, unit="B", unit_scale=True, desc=f"archiving {mar.name}",
                                             bar_format="{desc}: {n_fmt} written{postfix} [{elapsed}]") as bar:
        while proc.poll() is None:
            time.sleep(0.5)
            bar.n = mar.stat().st_size if mar.exists() else 0
            bar.set_postfix_str(f"of {total / 1e6:.0f} MB staged")
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
        bar.n = mar.stat().st_size
        bar.refresh()


def extract_archive(mar: Path, dest: Path) -> Path:
    """Unpack a .mar (a zip) as TorchServe does, e.g. to load its model in-process."""
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(dest)
    return dest


def build(model: str, checkpoint: Path | None = None, export_dir: Path = MODEL_STORE,
          name: str | None = None, precision: str | None = None) -> Path:
    name = name or model
    workdir = BUILD_DIR / name
    started = time.perf_counter()
    if checkpoint is None:
        checkpoint = workdir / DEMO_CHECKPOINT
        if (checkpoint / "config.json").exists():
            print(f"[1/3] using the demo {model} checkpoint in {checkpoint}", flush=True)
        else:
            print(f"[1/3] building the demo {model} checkpoint in {checkpoint}", flush=True)
            MODELS[model].default_checkpoint(checkpoint)
    else:
        print(f"[1/3] using checkpoint {checkpoint}", flush=True)
    if not (checkpoint / "config.json").exists():
        raise SystemExit(f"{checkpoint} has no config.json: not a saved checkpoint folder")
    print("[2/3] staging checkpoint, handler modules and model-config.yaml", flush=True)
    staged = stage(model, checkpoint, workdir, precision)
    print(f"[3/3] archiving with torch-model-archiver into {export_dir}", flush=True)
    mar = archive(model, staged, export_dir, name)
    size_mb = mar.stat().st_size / 1e6
    print(f"built {mar} ({size_mb:.1f} MB) in {time.perf_counter() - started:.1f}s", flush=True)
    return mar


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a model archive (.mar).")
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("--checkpoint", type=Path,
                        help="a saved checkpoint folder to pack (default: the demo, trained if missing)")
    parser.add_argument("--export-path", type=Path, default=MODEL_STORE)
    parser.add_argument("--name", help="archive and model name (default: the model kind)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                        help="handler.precision to pack (default: the model's model-config.yaml)")
    args = parser.parse_args(argv)
    build(args.model, args.checkpoint, args.export_path, args.name, args.precision)


if __name__ == "__main__":
    main()
