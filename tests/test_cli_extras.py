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
