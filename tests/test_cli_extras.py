"""A command that needs an extra the install lacks says which one, instead of a traceback."""

from __future__ import annotations

import pytest

from marport import cli


def _missing(name: str):
    def run(args, out):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)  # what the trainer's import raises
    return run


@pytest.mark.parametrize("module, extra", [("sklearn.model_selection", "train"), ("imblearn", "train")])
def test_a_missing_extra_is_named(monkeypatch, tmp_path, module, extra):
    import marport.train_respiratory as trainer

    monkeypatch.setattr(trainer, "run", _missing(module))
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train", "respiratory", "--workdir", str(tmp_path)])
    assert f"pip install 'marport[{extra}]'" in str(stopped.value) and module in str(stopped.value)


def test_any_other_missing_module_is_not_hidden(monkeypatch, tmp_path):
    import marport.train_respiratory as trainer

    monkeypatch.setattr(trainer, "run", _missing("not_an_extra"))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["train", "respiratory", "--workdir", str(tmp_path)])


def test_hints_name_the_command_as_it_can_be_typed(monkeypatch, tmp_path):
    """`make serve` runs .venv/bin/marport, which is not on PATH: its hints say .venv/bin/marport; where PATH
    finds the same script, `marport`; run as `python -m marport`, that."""
    import sys

    from marport.hints import typed

    script = tmp_path / ".venv" / "bin" / "marport"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [".venv/bin/marport", "serve"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert typed() == ".venv/bin/marport"
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin")
    assert typed() == "marport"
    monkeypatch.setattr(sys, "argv", ["/somewhere/marport/__main__.py", "serve"])
    assert typed() == f"{sys.executable} -m marport"


def test_predict_says_what_is_wrong_with_its_input_before_sending(tmp_path):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["predict", "sentiment", "--file", str(tmp_path / "missing.txt"), "--workdir", str(tmp_path)])
    assert str(stopped.value) == f"cannot read {tmp_path / 'missing.txt'}: No such file or directory"
    with pytest.raises(SystemExit) as stopped:
        cli.main(["predict", "sentiment", "hello", "--content-type", "application/x-www-form-urlencoded",
                  "--workdir", str(tmp_path)])
    assert "is not sent" in str(stopped.value)
