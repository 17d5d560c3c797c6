"""`marport build`: a model's `.mar` from its checkpoint, the serving modules and model-config.yaml, refused unless
it loads as a worker loads it. A demo kind (`marport build sentiment`), any checkpoint of one (`--checkpoint`), or
a model of one's own (`--core FILE.py`, docs/extending.md)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from marport import __version__
from marport.handlers.names import ARCHIVE_PACKAGE, CHECKPOINT_SUBDIR, CONFIG_DIR, PRECISIONS
from marport.processes import error_of
from marport.registry import MODELS, ModelKind
from marport.resources import handler_file
from marport.workspace import Workspace


def stage(kind: ModelKind, checkpoint: Path, workdir: Path, precision: str | None = None,
          review_band: str | None = None, s3_allow: list[str] | None = None, device: str = "cpu",
          gpus: int = 1) -> Path:
    """Lay out the archive's data: pack/checkpoint/, pack/marport_serving/ (the serving modules), the root entry module
    and model-config.yaml (torch-model-archiver copies the contents of pack/ to the archive's root); an int8 archive
    gets its ONNX graph made here, once."""
    staged = workdir / "stage"
    if staged.exists():
        shutil.rmtree(staged)
    target = staged / "pack" / CHECKPOINT_SUBDIR
    target.mkdir(parents=True)
    package = staged / "pack" / ARCHIVE_PACKAGE  # the serving code, one package: no bare top-level names
    package.mkdir()
    for module in ("__init__.py", *kind.modules):
        if kind.source is None:
            shutil.copy2(handler_file(module), package / module)
        elif module == kind.core:
            shutil.copy2(kind.source, package / module)
        elif module != kind.entry:
            shutil.copy2(handler_file(module), package / module)
    if kind.source is not None:  # a model of one's own: its TorchServe handler class, beside its module
        (package / kind.entry).write_text(package_entry(kind))
    (package / CONFIG_DIR).mkdir()  # the model's defaults (settings.shipped_settings), as shipped
    shutil.copy2(kind.config, package / CONFIG_DIR / kind.config.name)
    (staged / kind.entry).write_text(entry_module(kind, ARCHIVE_PACKAGE))
    for item in sorted(checkpoint.iterdir()):
        if item.is_file():
            shutil.copy2(item, target / item.name)
    config_text = kind.config.read_text()
    if precision:
        config_text = with_handler_setting(config_text, "precision", precision)
    config_text = deployment_settings(config_text, review_band, s3_allow, device, gpus)
    (staged / "model-config.yaml").write_text(config_text)
    import yaml

    if (yaml.safe_load(config_text).get("handler") or {}).get("precision") == "int8":
        from marport.handlers.int8 import INT8_FILE, export_int8

        print(f"      exporting the int8 ONNX graph ({INT8_FILE})", flush=True)
        export_int8(str(target))
    return staged


def entry_module(kind: ModelKind, package: str) -> str:
    """The archive's TorchServe entry (its --handler, at the archive's root): TorchServe takes the handler
    class defined in that very module, so it subclasses the package's, which names the model core."""
    import importlib

    from marport.handlers.endpoint import entry_class

    name = (f"{model_class(kind.source)}Handler" if kind.source else
            entry_class(importlib.import_module(f"marport.handlers.{kind.entry[:-3]}")).__name__)
    return (f'"""TorchServe\'s entry point of this {kind.name} archive, written by `marport build`: the serving code\n'
            f'is the {package} package beside it."""\n\n'
            f"from {package}.{kind.entry[:-3]} import {name} as _Handler\n\n\n"
            f"class {name}(_Handler):\n"
            f'    """{kind.name}: the handler of the {package} package, defined here for TorchServe."""\n')


def model_class(source: Path) -> str:
    """The one class in a model's module that subclasses contract.Model."""
    import ast

    tree = ast.parse(source.read_text(encoding="utf-8"))
    found = [node.name for node in tree.body if isinstance(node, ast.ClassDef)
             and any(getattr(base, "id", getattr(base, "attr", "")) == "Model" for base in node.bases)]
    if len(found) != 1:
        raise SystemExit(f"{source} must define exactly one subclass of Model (docs/extending.md); found "
                         f"{', '.join(found) or 'none'}")
    return found[0]


def package_entry(kind: ModelKind) -> str:
    """The TorchServe handler class of a model of one's own, inside the archive's package."""
    assert kind.source is not None
    name = model_class(kind.source)
    return (f'"""TorchServe handler of {kind.name}, written by `marport build --core`."""\n\n'
            f"from .{kind.core[:-3]} import {name}\nfrom .torchserve_adapter import CoreHandler\n\n\n"
            f"class {name}Handler(CoreHandler):\n    core = {name}\n")


def with_handler_setting(config_text: str, key: str, value: str) -> str:
    """The model-config.yaml text with handler.<key> set to `value` (YAML), its comments kept."""
    import re

    line = re.compile(rf"^(\s+{re.escape(key)}:[ \t]*)[^#\n]*?([ \t]*(#.*)?)$", re.MULTILINE)
    if line.search(config_text):
        return line.sub(lambda m: m.group(1) + value + (m.group(2) or ""), config_text, count=1)
    return config_text.replace("handler:\n", f"handler:\n  {key}: {value}\n", 1)


def with_top_level_setting(config_text: str, key: str, value: str, why: str = "") -> str:
    """The model-config.yaml text with the top-level <key> set to `value` (YAML), its comments kept."""
    import re

    line = re.compile(rf"^({re.escape(key)}:[ \t]*)[^#\n]*?([ \t]*(#.*)?)$", re.MULTILINE)
    if line.search(config_text):
        return line.sub(lambda m: m.group(1) + value + (f"  # {why}" if why else (m.group(2) or "")), config_text, count=1)
    first = re.search(r"^[A-Za-z]", config_text, re.MULTILINE)  # before the first key, after the header comment
    at = first.start() if first else len(config_text)
    return config_text[:at] + f"{key}: {value}" + (f"  # {why}" if why else "") + "\n" + config_text[at:]


DEVICES = ("auto", "cpu", "gpu")


def resolve_device(device: str | None, gpus: int | None = None) -> tuple[str, int]:
    """`auto` (or None) is `gpu` where this machine has CUDA, else `cpu`; GPUs default to those visible (at least 1)."""
    import torch

    device = device or "auto"
    if device == "auto":
        device = "gpu" if torch.cuda.is_available() else "cpu"
    return device, max(1, gpus or (torch.cuda.device_count() if torch.cuda.is_available() else 1))


def for_device(config_text: str, device: str, gpus: int = 1) -> str:
    """The yaml for an archive served on `device`. `cpu`: as written (its top-level keys are the CPU's).
    `gpu`: deviceType gpu, and handler.devices.gpu's TorchServe keys at the top level: batchSize, maxBatchDelay,
    and workers_per_gpu x `gpus` workers (TorchServe spreads a model's workers over the GPUs)."""
    if device == "cpu":
        return config_text
    import yaml

    if device != "gpu":
        raise SystemExit(f"--device takes one of {', '.join(DEVICES)}, got {device!r}")
    entry = ((yaml.safe_load(config_text).get("handler") or {}).get("devices") or {}).get("gpu") or {}
    why = "handler.devices.gpu (marport build --device gpu)"
    config_text = with_top_level_setting(config_text, "deviceType", "gpu", why)
    for key in ("batchSize", "maxBatchDelay"):
        if key in entry:
            config_text = with_top_level_setting(config_text, key, str(entry[key]), why)
    if "workers_per_gpu" in entry:
        workers = str(int(entry["workers_per_gpu"]) * gpus)
        for key in ("minWorkers", "maxWorkers"):
            config_text = with_top_level_setting(config_text, key, workers, f"{entry['workers_per_gpu']} per GPU x {gpus}")
    return config_text


def deployment_settings(config_text: str, review_band: str | None = None, s3_allow: list[str] | None = None,
                        device: str = "cpu", gpus: int = 1) -> str:
    """The yaml with the settings a deployment chooses (at build or at SageMaker packaging), comments kept."""
    config_text = for_device(config_text, device, gpus)
    if review_band is not None:
        config_text = with_handler_setting(config_text, "review_band", review_band_yaml(review_band))
    if s3_allow:
        import json

        entries = [e.strip().removeprefix("s3://") for e in s3_allow if e.strip()]
        config_text = with_handler_setting(config_text, "s3_allowed_buckets", json.dumps(entries))
    return config_text


def review_band_yaml(band: str) -> str:
    """`--review-band 0.4,0.6` (or `off`) as the YAML of handler.review_band, checked here so that
    a typo fails the build, not the model's load."""
    if band.strip().lower() in ("off", "none", ""):
        return "null"
    parts = [p.strip() for p in band.split(",")]
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise SystemExit(f"--review-band takes LOW,HIGH (or off), got {band!r}") from None
    if not 0.0 <= low <= high <= 1.0:
        raise SystemExit(f"--review-band needs 0 <= LOW <= HIGH <= 1, got {band!r}")
    return f"[{low:g}, {high:g}]"


def archive(kind: ModelKind, staged: Path, export_dir: Path, name: str) -> Path:
    extra = [str(staged / "pack")]  # checkpoint/ and the marport_serving package
    export_dir.mkdir(parents=True, exist_ok=True)
    archiver = Path(sys.executable).with_name("torch-model-archiver")  # beside this Python, even if not on PATH
    cmd = [str(archiver if archiver.exists() else "torch-model-archiver"), "--model-name", name,
           "--version", __version__, "--handler", str(staged / kind.entry), "--extra-files", ",".join(extra),
           "--config-file", str(staged / "model-config.yaml"), "--export-path", str(export_dir), "--force"]
    mar = export_dir / f"{name}.mar"
    mar.unlink(missing_ok=True)
    _run_with_progress(cmd, mar, sum(p.stat().st_size for p in (staged / "pack").rglob("*") if p.is_file()))
    return mar


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


LOAD_CHECK_TIMEOUT_S = 600  # a roberta-base-size checkpoint loads and warms up in seconds; compiling takes longer


def check_loads(kind: ModelKind, staged: Path, checkpoint: Path) -> None:
    """Load the staged archive's model as a serving worker will (its entry, its core, its settings; the CPU),
    in a child process so the staged package never enters this one; refuse the build with the reason."""
    import tempfile

    code = ("import sys; sys.path.insert(0, sys.argv[1]); "  # the archive's own serving code, not this install's
            f"from {ARCHIVE_PACKAGE}.endpoint import Endpoint, core_of; Endpoint(core_of(sys.argv[1]), sys.argv[1])")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the check runs where the build runs: the CPU is enough
    with tempfile.TemporaryDirectory(prefix="load-check-", dir=staged.parent) as root:
        for item in [*staged.iterdir(), *(staged / "pack").iterdir()]:  # the archive's root, as a worker sees it
            if item.name != "pack":
                (Path(root) / item.name).symlink_to(item.resolve())
        try:
            done = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True, env=env,
                                  timeout=LOAD_CHECK_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{checkpoint} did not load as a {kind.name} model in {LOAD_CHECK_TIMEOUT_S} s") from None
    if done.returncode != 0:
        raise SystemExit(f"{checkpoint} cannot be served as a {kind.name} model ({kind.summary}); nothing was "
                         f"built. Loaded as a worker loads it, it failed with:\n  {error_of(done.stderr.splitlines())}")


def extract_archive(mar: Path, dest: Path) -> Path:
    """Unpack a .mar (a zip) as TorchServe does, e.g. to load its model in-process."""
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(dest)
    return dest


def build(model: str | None, checkpoint: Path | None = None, export_dir: Path | None = None,
          name: str | None = None, precision: str | None = None, workspace: Workspace | None = None,
          review_band: str | None = None, s3_allow: list[str] | None = None, device: str | None = None,
          gpus: int | None = None, core: Path | None = None, config: Path | None = None) -> Path:
    """Build `<export_dir>/<name>.mar`; export_dir defaults to the workspace's model store. `core` (with its
    `config`, and a `checkpoint`) is a model of one's own instead of a registry kind."""
    workspace = workspace or Workspace.at()
    kind = own_kind(core, config, checkpoint) if core else MODELS[str(model)]
    model = kind.name
    name = name or model
    export_dir = export_dir or workspace.model_store
    started = time.perf_counter()
    if checkpoint is None:
        checkpoint = workspace.checkpoint(model)
        if (checkpoint / "config.json").exists():
            print(f"[1/3] using the demo {model} checkpoint in {checkpoint}", flush=True)
        else:
            print(f"[1/3] training the demo {model} checkpoint into {checkpoint} (`marport train {model}`)", flush=True)
            kind.trainer.build_default(checkpoint)
    else:
        print(f"[1/3] using checkpoint {checkpoint}", flush=True)
    if not (checkpoint / "config.json").exists():
        raise SystemExit(f"{checkpoint} has no config.json: not a checkpoint saved with save_pretrained")
    device, gpus = resolve_device(device, gpus)
    target = f"{gpus} GPU(s)" if device == "gpu" else "the CPU (--device gpu packs a GPU archive)"
    print(f"[2/3] staging checkpoint, handler modules and model-config.yaml for {target}", flush=True)
    staged = stage(kind, checkpoint, workspace.build / name, precision, review_band, s3_allow, device, gpus)
    print("      loading it as a worker will, to refuse what cannot serve", flush=True)
    check_loads(kind, staged, checkpoint)
    print(f"[3/3] archiving with torch-model-archiver into {export_dir}", flush=True)
    mar = archive(kind, staged, export_dir, name)
    size_mb = mar.stat().st_size / 1e6
    print(f"built {mar} ({size_mb:.1f} MB) in {time.perf_counter() - started:.1f}s", flush=True)
    return mar


def own_kind(core: Path, config: Path | None, checkpoint: Path | None) -> ModelKind:
    """A model of one's own, checked before anything is staged."""
    from marport.registry import COMMON_MODULES, custom_kind

    if not core.is_file() or core.suffix != ".py":
        raise SystemExit(f"--core {core}: not a Python file")
    if core.name in COMMON_MODULES or core.name in {m for k in MODELS.values() for m in k.modules}:
        raise SystemExit(f"--core {core}: {core.name} is the name of one of marport's own modules; rename the file")
    if config is None or not config.is_file():
        raise SystemExit(f"--core needs --config, its model-config.yaml (docs/extending.md); got {config}")
    if checkpoint is None:
        raise SystemExit("--core needs --checkpoint, the folder its load() reads")
    model_class(core)
    return custom_kind(core.stem, core.resolve(), config.resolve())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", choices=sorted(MODELS),
                        help="the model kind (its handler and model-config.yaml); or --core for your own")
    parser.add_argument("--core", type=Path, metavar="FILE.py",
                        help="a model of your own: one module defining a subclass of Model (docs/extending.md)")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="with --core: its model-config.yaml (TorchServe's keys, and handler: settings)")
    parser.add_argument("--checkpoint", type=Path, metavar="DIR",
                        help="a checkpoint folder saved with save_pretrained (default: the workspace's demo "
                             "checkpoint, build/MODEL/demo-checkpoint, trained first if missing)")
    parser.add_argument("--name", help="archive and served model name (default: the model kind)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="handler.precision to pack (default: the one in the model's model-config.yaml)")
    parser.add_argument("--review-band", metavar="LOW,HIGH",
                        help="mark answers whose deciding score lies in [LOW, HIGH] with \"review\": true "
                             "(handler.review_band; default: the model-config.yaml's, off)")
    parser.add_argument("--s3-allow", action="append", metavar="BUCKET[/PREFIX]",
                        help="accept {\"s3_uri\": ...} requests for objects in this bucket (and key prefix); "
                             "repeatable (handler.s3_allowed_buckets; default: off)")
    add_device_arguments(parser)


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="what the archive is served on: gpu packs deviceType gpu with handler.devices.gpu's "
                             "batchSize, maxBatchDelay and workers per GPU; cpu leaves model-config.yaml as written; "
                             "auto (default): gpu where this machine has CUDA")
    parser.add_argument("--gpus", type=int, metavar="N",
                        help="GPUs per host, for the worker count of a GPU archive (default: those visible, or 1)")


def run(args: argparse.Namespace, workspace: Workspace) -> None:
    if bool(args.model) == bool(args.core):
        raise SystemExit("name a model kind (" + ", ".join(sorted(MODELS)) + ") or --core FILE.py, not both")
    checkpoint = args.checkpoint.resolve() if args.checkpoint else None
    build(args.model, checkpoint, name=args.name, precision=args.precision, workspace=workspace,
          review_band=args.review_band, s3_allow=args.s3_allow, device=args.device, gpus=args.gpus,
          core=args.core.resolve() if args.core else None, config=args.config.resolve() if args.config else None)
