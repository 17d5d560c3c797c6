"""The `marport` command: train, build, serve and deploy models from any folder. Each subcommand's work lives in its
own module, imported when the command runs, so `marport --help` answers at once."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from marport import __version__
from marport.hints import typed
from marport.registry import MODELS
from marport.workspace import Workspace, activate

EPILOG = """\
a first model, from an empty folder:
  marport build sentiment --checkpoint ./my-checkpoint --name mine
  marport serve
  marport predict mine "The staff were lovely"
  marport stop

Workspace folders (model_store/, build/, var/) live in the current folder, or --workdir.
"""


def _common() -> argparse.ArgumentParser:
    """--workdir and --model-store, accepted after any subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("workspace")
    group.add_argument("--workdir", type=Path, metavar="DIR",
                       help="folder holding model_store/, build/ and var/ (default: the current folder)")
    group.add_argument("--model-store", type=Path, metavar="DIR",
                       help="where archives are written and served from (default: WORKDIR/model_store)")
    return common


# --------------------------------------------------------------------------- commands


def _train(args, workspace: Workspace) -> None:
    kind = MODELS[args.model]
    out = args.out.resolve() if args.out else workspace.checkpoint(args.model)
    kind.trainer.run(args, out)
    print(f"next: {typed()} build {args.model}" + (f" --checkpoint {out}" if args.out else ""))


def _build(args, workspace: Workspace) -> None:
    from marport import build

    build.run(args, workspace)


def _serve_ray(args, workspace: Workspace) -> None:
    from marport.ray_server import LocalRay

    archives = workspace.archives()
    if args.models:
        wanted = {m.removesuffix(".mar") for m in args.models.split(",")}
        archives = [a for a in archives if a.stem in wanted]
    print(f"starting Ray Serve with {', '.join(a.stem for a in archives) or 'nothing'} (about 10-30 s)", flush=True)
    try:
        state = LocalRay(workspace).start(archives)
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(str(exc))
    print(f"Ray Serve is serving {', '.join(state['models'])} at {state['url']}/predictions/NAME "
          f"(log: {LocalRay(workspace).dir / 'serve.log'})")
    print("Try:")
    for name in state["models"]:
        print(f"  {_predict_example(workspace, name)}")
    print(f"Stop with: {typed()} stop")


def _serve(args, workspace: Workspace) -> None:
    from marport.server import LoadFailed, LocalTorchServe, NothingToServe

    if args.runtime == "ray":
        return _serve_ray(args, workspace)
    server = LocalTorchServe.for_workspace(workspace)
    if server.is_running():
        print(f"stopping the TorchServe already running from {workspace.root}")
        server.stop()
    models = [m if m.endswith(".mar") else f"{m}.mar" for m in args.models.split(",")] if args.models else None
    try:
        server.start(models)
    except NothingToServe as exc:
        raise SystemExit(f"nothing to serve: {exc}")
    except RuntimeError as exc:
        raise SystemExit(str(exc))
    try:
        names = server.wait_ready()
    except (TimeoutError, LoadFailed) as exc:
        server.stop()
        raise SystemExit(str(exc))
    except BaseException:  # SIGTERM/Ctrl-C before it was ready: not left half-started
        server.stop()
        raise
    print(f"TorchServe is serving {', '.join(names)} at {server.inference_url} (logs in {server.run_dir / 'logs'})")
    print("Try:")
    for name in names:
        print(f"  {_predict_example(workspace, name)}")
    print(f"Stop with: {typed()} stop")


def _predict_example(workspace: Workspace, name: str) -> str:
    """A `marport predict` line for a served model, with its kind's sample request."""
    kind = _kind_of(workspace, name)
    sample = kind.sample(workspace) if kind else None
    if isinstance(sample, Path):
        return f"{typed()} predict {name} --file {sample}"
    return f"{typed()} predict {name} {json.dumps(sample or 'your text here')}"


def _kind_of(workspace: Workspace, name: str):
    import zipfile

    from marport.registry import for_archive

    try:
        return for_archive(workspace.model_store / f"{name}.mar")
    except (OSError, ValueError, zipfile.BadZipFile):
        return None


def _ui(args, workspace: Workspace) -> None:
    from marport import ui

    ui.run(args, workspace)


def _stop(args, workspace: Workspace) -> None:
    from marport.ray_server import LocalRay
    from marport.server import LocalTorchServe

    stopped_ray = LocalRay(workspace).stop()
    if stopped_ray:
        print("Ray Serve stopped")
    server = LocalTorchServe.for_workspace(workspace)
    if server.is_running():
        server.stop()
        print("TorchServe stopped")
    elif not stopped_ray:
        print(f"nothing is serving from {workspace.root} (neither TorchServe nor Ray Serve)")


def _status(args, workspace: Workspace) -> None:
    from marport.client import NotServing, addresses, running_server
    from marport.ray_server import LocalRay

    archives = ", ".join(p.name for p in workspace.archives()) or "none"
    ray = LocalRay(workspace).state()
    if ray is not None:
        print(f"Ray Serve running, pid {ray['pid']}, serving {', '.join(ray['models'])} at {ray['url']}/predictions/NAME")
    try:
        server = running_server(workspace)
    except NotServing:
        if ray is not None:
            return
        print(f"stopped (workdir {workspace.root}; archives in {workspace.model_store}: {archives})")
        sys.exit(3)  # like `systemctl status`: scripts can tell stopped from running
    print(f"running, pid {server.pid} (workdir {workspace.root}; archives: {archives})")
    for key, url in addresses(server).items():
        print(f"  {key.replace('_address', '')}: {url}")


def _predict(args, workspace: Workspace) -> None:
    from marport.client import NotServing, predict, request_body

    if (args.text is None) == (args.file is None):
        raise SystemExit("give the request as TEXT or --file FILE (one of the two)")
    body, content_type = request_body(args.text, args.file, args.content_type)
    if args.endpoint:  # a SageMaker multi-model endpoint: the model is the TargetModel NAME.tar.gz
        from marport.sagemaker_deploy.aws import invoke

        status, reply = invoke(args.endpoint, body, content_type, args.region, target_model=f"{args.model}.tar.gz")
        print(reply.decode("utf-8", errors="replace"))
        return None if status == 200 else sys.exit(f"HTTP {status}")
    try:
        answer = predict(workspace, args.model, body, content_type)
    except NotServing as exc:
        raise SystemExit(str(exc))
    print(answer.body)
    if not answer.ok:
        sys.exit(f"HTTP {answer.status}")


def _token(args, workspace: Workspace) -> None:
    from marport.client import NotServing, fresh_inference_key

    try:
        print(fresh_inference_key(workspace))
    except NotServing as exc:
        raise SystemExit(str(exc))


def _bench(args, workspace: Workspace) -> None:
    from marport.bench import run

    run.run(args)


# --------------------------------------------------------------------------- the parser


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command tree. The options of `train MODEL` and `bench` come from modules that
    import torch, so they are only read when `argv` asks for that command."""
    words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")]

    def wants(*path: str) -> bool:
        return words[: len(path)] == list(path)

    common = [_common()]
    top = argparse.ArgumentParser(
        prog="marport", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Put a fine-tuned PyTorch model behind TorchServe; deploy the same archive to SageMaker.")
    top.add_argument("--version", action="version", version=f"marport {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_commands(sub, common, wants)
    _serving_commands(sub, common)
    _client_commands(sub, common)
    _other_commands(sub, common, wants)
    return top


def _train_commands(sub, common: list, wants) -> None:
    train = sub.add_parser("train", help="train a model (the demo models, or yours from your data)",
                           description="Train a model; writes a save_pretrained checkpoint.")
    kinds = train.add_subparsers(dest="model", required=True, metavar="MODEL")
    for kind in MODELS.values():
        p = kinds.add_parser(kind.name, parents=common, help=kind.summary, description=kind.summary)
        p.add_argument("--out", type=Path, metavar="DIR",
                       help=f"checkpoint folder (default: WORKDIR/build/{kind.name}/demo-checkpoint)")
        if wants("train", kind.name):
            kind.trainer.add_arguments(p)
        p.set_defaults(run=_train)


def _serving_commands(sub, common: list) -> None:
    """build, serve, ui, stop, status."""
    from marport import build

    p = sub.add_parser("build", parents=common, help="pack a checkpoint into a TorchServe archive (.mar)",
                       description="Pack a checkpoint, the handler modules and the model's model-config.yaml "
                                   "into MODEL_STORE/NAME.mar; the archive needs nothing from marport to run.")
    build.add_arguments(p)
    p.set_defaults(run=_build)

    p = sub.add_parser("serve", parents=common, help="start TorchServe on 127.0.0.1 with the archives built here",
                       description="Start TorchServe (loopback only, token auth on) with WORKDIR/config.properties, "
                                   "or the shipped one; wait until every model has a ready worker.")
    p.add_argument("--models", metavar="A,B", help="comma-separated archive names (default: every archive in the store)")
    p.add_argument("--runtime", choices=("torchserve", "ray"), default="torchserve",
                   help="ray: the same archives on Ray Serve (a local Ray head; docs/runtimes.md)")
    p.set_defaults(run=_serve)

    p = sub.add_parser("ui", parents=common, help="a local page to try the served models in a browser",
                       description="Serve one page on 127.0.0.1 for the models served from this workspace (or a "
                                   "SageMaker endpoint): text or a recording in, the answer and its explanation "
                                   "drawn. The server's key stays here; the page loads nothing from the internet.")
    from marport import ui

    ui.add_arguments(p)
    p.set_defaults(run=_ui)

    p = sub.add_parser("stop", parents=common, help="stop the TorchServe started here, and its workers")
    p.set_defaults(run=_stop)

    p = sub.add_parser("status", parents=common, help="is TorchServe running here, and where (exit 3 if stopped)")
    p.set_defaults(run=_status)


def _client_commands(sub, common: list) -> None:
    """predict, token: requests to the server started here."""
    p = sub.add_parser("predict", parents=common, help="send one request to a served model; prints the JSON answer",
                       description="Send TEXT (text/plain) or a file (typed by its extension: .wav .flac .ogg .mp3 "
                                   ".npy .json .txt) to a model served here. Reads the server's key itself.")
    p.add_argument("model", help="the served model's name")
    p.add_argument("text", nargs="?", help="the text to classify")
    p.add_argument("--file", type=Path, help="send this file's bytes instead")
    p.add_argument("--content-type", help="override the Content-Type")
    p.add_argument("--endpoint", help="a SageMaker multi-model endpoint instead: MODEL is its TargetModel MODEL.tar.gz")
    p.add_argument("--region", help="with --endpoint (default: $AWS_REGION)")
    p.set_defaults(run=_predict)

    p = sub.add_parser("token", parents=common, help="print a fresh inference key (keys expire after 60 minutes)",
                       description="Ask the running server for a new inference key and print it; the previous "
                                   "key stops working. Use it as: curl -H \"Authorization: Bearer $(marport token)\"")
    p.set_defaults(run=_token)


def _other_commands(sub, common: list, wants) -> None:
    """sagemaker ..., bench."""
    from marport.sagemaker_deploy import cli as sagemaker_cli

    p = sub.add_parser("sagemaker", help="package, run locally, deploy, invoke or delete on SageMaker",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=textwrap.dedent(sagemaker_cli.__doc__))
    sagemaker_cli.add_commands(p.add_subparsers(dest="action", required=True, metavar="ACTION"), common)

    p = sub.add_parser("bench", parents=common, help="benchmark served models against their in-process ceiling",
                       description="Served throughput and latency against each model's in-process ceiling; "
                                   "writes bench/results/latest.json and BENCHMARKS.md in the workdir.")
    if wants("bench"):
        from marport.bench import run as bench_run

        bench_run.add_arguments(p)
    p.set_defaults(run=_bench)


# A module an extra brings (pyproject.toml) -> that extra: a command that needs it says what to install.
EXTRA_OF = {"sklearn": "train", "imblearn": "train", "matplotlib": "train", "ts": "serve", "captum": "serve",
            "onnxruntime": "serve", "onnx": "serve", "sagemaker": "sagemaker", "sagemaker_inference": "sagemaker",
            "ray": "ray", "librosa": "notebooks"}


def main(argv: list[str] | None = None) -> None:
    from marport.processes import Stopped, stop_on_signals

    try:
        args = parser(argv).parse_args(argv)
        workspace = activate(Workspace.at(args.workdir, args.model_store))
        stop_on_signals()  # a server this command started is stopped on SIGTERM as on Ctrl-C
        args.run(args, workspace)
    except Stopped as why:
        raise SystemExit(f"stopped by {why}; everything this command started has been stopped") from None
    except ModuleNotFoundError as err:
        extra = EXTRA_OF.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        raise SystemExit(f"{err.name} is not installed; this command needs marport's `{extra}` extra: "
                         f"pip install 'marport[{extra}]'") from None


if __name__ == "__main__":
    main()
