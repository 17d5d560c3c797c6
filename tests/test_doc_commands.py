"""Every shell block of README.md and docs/ runs as written, in a fresh clone, from the clone's root.

The clone is the repository's files as git lists them, with what `make` builds (the venv, the demo checkpoints
and recordings, the archives) linked in unchanged, so `make serve` finds everything up to date. Blocks run in
page order in one clone, as a reader goes through them: the README first (`make serve` starts the server the
other pages use, and sets `KEY`), then each page of docs/. A block whose first line reads `# needs: ...` names
what a test machine lacks (AWS, the network, your own data) and is skipped; one whose first line reads
`# runs until Ctrl-C` ends with a server in the foreground: its last command runs in its own session until it
says how to stop it, the next blocks run against it, and then it gets Ctrl-C. `make test` is this run itself.
The only change to what a reader pastes: TorchServe's, the page's and serve-local's port numbers become free
ones, in the clone's config.properties and in the commands alike.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from marport.processes import free_port
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

# Local TorchServe first (serving, operations), then the other runtimes (runtimes.md stops it); others last.
ORDER = ["serving", "caps", "devices", "operations", "runtimes", "architecture", "development"]
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"),
                                          key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.stem))]
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
BLOCK_TIMEOUT_S = 420
FIXED_PORTS = (8080, 8081, 8082, 7070, 7071, 8090, 8300)  # the shipped config's, serve-local's and the page's
BUILT = ["build/models.mk", "build/sentiment/demo-checkpoint", "build/respiratory/demo-checkpoint",
         "build/respiratory/synthetic", "model_store/sentiment.mar", "model_store/respiratory.mar"]


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    text: str

    @property
    def first(self) -> str:
        return self.text.splitlines()[0] if self.text.strip() else ""

    @property
    def needs(self) -> str | None:
        return self.first.removeprefix("# needs:").strip() if self.first.startswith("# needs:") else None

    @property
    def foreground(self) -> bool:
        return self.first.startswith("# runs until Ctrl-C")

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in BLOCK.finditer(text):
            found.append(Block(str(page.relative_to(REPO_ROOT)), text.count("\n", 0, match.start()) + 1, match.group(1)))
    return found


def test_every_block_is_run_or_says_what_it_needs():
    """The rule this module enforces: a reader can tell, from the block itself, why a test does not run it."""
    for block in blocks():
        if block.needs is not None:
            assert re.search(r"AWS|network|recordings|GPU|data", block.needs), (str(block), block.needs)
        for line in block.text.splitlines():
            command = line.split("#", 1)[0].strip()
            if block.needs is None and re.match(r"marport\b", command):
                pytest.fail(f"{block}: `{command}` needs the venv activated; write .venv/bin/marport")


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A fresh clone's files (git's list, working-tree contents, times kept) with make's outputs linked in,
    every fixed port moved to a free one."""
    root = tmp_path_factory.mktemp("doc-commands") / "clone"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if not (source.exists() or source.is_symlink()):
            continue  # deleted in the working tree
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, root / name, follow_symlinks=False)
    (root / ".venv").symlink_to(REPO_ROOT / ".venv")
    for name in BUILT:  # hard links: the same files and times, and a rebuild replaces rather than rewrites them
        source, target = REPO_ROOT / name, root / name
        if not source.exists():
            pytest.fail(f"{source} is missing: run the tests with `make test`, which builds it")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, copy_function=os.link)
        else:
            os.link(source, target)
    ports = {port: free_port() for port in FIXED_PORTS}
    config = root / "config.properties"
    config.write_text(moved(config.read_text(), ports))
    (root / "tmp").mkdir()
    return root, ports


def moved(text: str, ports: dict[int, int]) -> str:
    """`text` with each fixed port number (after `:` or `--port `, or `_port=`) replaced by its free one."""
    return re.sub(r"(?<=[:=])\d{4}\b|(?<=--port )\d{4}\b", lambda m: str(ports.get(int(m.group(0)), m.group(0))), text)


class Reader:
    """Runs blocks as a reader pastes them, in one clone: variables set by one block stay for the next."""

    def __init__(self, root: Path, ports: dict[int, int]):
        self.root, self.ports = root, ports
        self.state = root / "tmp" / "doc-state.sh"
        self.state.write_text("")
        # A short private temp folder: Ray puts Unix sockets under it, whose paths may not exceed 107 bytes.
        self.temp = tempfile.mkdtemp(prefix="doc-", dir="/tmp")
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
                    "TEMP": self.temp, "TMPDIR": self.temp, "LANG": "C.UTF-8"}
        self.foreground: subprocess.Popen | None = None

    def script(self, text: str) -> str:
        # allexport: what a block assigns (KEY=...) is kept for the next block, as in one terminal
        return (f"set -a; . {self.state}; set -eo pipefail\n{moved(text, self.ports)}\n"
                f"export -p | grep -v -E ' (PWD|OLDPWD|SHLVL|_)=' > {self.state}\n")

    def run(self, block: Block, text: str | None = None) -> str:
        done = subprocess.run(["bash", "-c", self.script(block.text if text is None else text)], cwd=self.root,
                              env=self.env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
        said = done.stdout + done.stderr
        assert done.returncode == 0, f"{block} failed ({done.returncode}):\n{said[-3000:]}"
        assert "Traceback" not in said, f"{block}:\n{said[-3000:]}"
        errors = re.findall(r'"code": ?([45]\d\d)', said)
        assert not errors, f"{block} answered an error:\n{said[-3000:]}"
        return said

    def start_foreground(self, block: Block) -> None:
        *before, last = [line for line in block.text.splitlines() if line.split("#", 1)[0].strip()]
        if before:
            self.run(block, "\n".join(before))
        log = self.root / "tmp" / f"foreground-{block.line}.log"
        with open(log, "w") as out:
            self.foreground = subprocess.Popen(["bash", "-c", self.script(last)], cwd=self.root, env=self.env,
                                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + BLOCK_TIMEOUT_S
        while "Ctrl-C" not in log.read_text():  # what each such server prints once it is ready
            assert self.foreground.poll() is None, f"{block} exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{block} not ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        self.foreground.log = log  # type: ignore[attr-defined]
        link = re.search(r"open (http://\S+)", log.read_text())
        if link:  # the page: the printed link opens it
            assert requests.get(link.group(1), timeout=30).status_code == 200

    def stop_foreground(self) -> None:
        if self.foreground is None:
            return
        os.killpg(self.foreground.pid, signal.SIGINT)  # Ctrl-C
        try:
            self.foreground.wait(60)
        finally:
            if self.foreground.poll() is None:
                os.killpg(self.foreground.pid, signal.SIGKILL)
        self.foreground = None

    def close(self) -> None:
        self.stop_foreground()
        subprocess.run([".venv/bin/marport", "stop"], cwd=self.root, env=self.env, capture_output=True, timeout=120)
        for proc in _servers_under(self.root):
            proc.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


def _servers_under(root: Path) -> list:
    """Anything still running from the clone (a TorchServe started by hand there, say)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if str(root) in " ".join(proc.info["cmdline"] or []) or str(proc.info["cwd"] or "").startswith(str(root)):
                found.append(proc)
        except psutil.Error:
            continue
    return [p for p in found if p.pid != os.getpid()]


def test_every_runnable_block_runs_as_written(clone):
    root, ports = clone
    reader = Reader(root, ports)
    ran, skipped = [], []
    try:
        for block in blocks():
            if block.needs is not None:
                skipped.append(f"{block} (needs {block.needs})")
                continue
            if block.page == "README.md" and re.search(r"^make test\b", block.text, re.M):
                # `make test` is this very run: the block's other lines run
                text = "\n".join(line for line in block.text.splitlines() if not line.startswith("make test"))
                reader.run(block, text)
            elif block.foreground:
                reader.stop_foreground()
                reader.start_foreground(block)
            else:
                said = reader.run(block)
                if "/predictions/" in block.text and "curl" in block.text:
                    assert re.search(r'"(label|probability)"', said), f"{block} gave no answer:\n{said[-2000:]}"
            ran.append(str(block))
    finally:
        reader.close()
    assert len(ran) >= 12, ran
    assert len(skipped) <= 8, skipped
    assert not _servers_under(root), "a block's server outlived marport stop"
