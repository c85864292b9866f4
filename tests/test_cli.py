"""The command line as a whole: one error style, help from the configs, no command = help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

import iht
from iht.cli import cli, main
from iht.cli.options import default_of
from iht.errors import IhtError, InvalidValueError
from iht.experiments.config import CompareConfig, TrainConfig
from iht.study.config import OracleConfig, StudyConfig

#: Each command and the config dataclass its options fill.
CONFIGS: dict[str, type[Any]] = {
    "reproduce": StudyConfig,
    "train": TrainConfig,
    "compare": CompareConfig,
    "oracle": OracleConfig,
}


def test_no_command_prints_help_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: iht") and "reproduce" in out and "train" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"iht, version {iht.__version__}\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["frob"], "iht: error: No such command 'frob'."),
        (["reproduce", "iris", "--runs", "0"], "iht: error: Invalid value for '--runs': 0 is not"),
        (["reproduce", "mnist"], "iht: error: Invalid value for '{iris}': 'mnist' is not 'iris'."),
        (["reproduce", "iris", "--levels", "1-x"], "'--levels': '1-x' is not a list of levels"),
        (["reproduce", "iris", "--levels", "0-3"], "levels must be sparsity levels in 1..14"),
        (["train", "--sparsity", "5"], "iht: error: Missing option '--data'."),
        (["train", "--data", "iris", "--sparsity", "5", "--frob"], "No such option '--frob'."),
        (["compare", "--sparsity", "5", "--seeds", "two"], "'--seeds': 'two' is not a valid"),
        (["oracle", "/no/such/study"], "iht: error: /no/such/study holds no study"),
        (["report", "/no/such/dir"], "iht: error: /no/such/dir is not a directory of results"),
    ],
)
def test_every_user_error_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert err.count("\n") == 1 and err.startswith("iht: error: "), err
    assert message in err


def test_only_project_errors_become_one_line() -> None:
    """Any other exception is a bug: it keeps its traceback (main does not catch it)."""

    @click.command("boom")
    @click.option("--kind")
    def boom(kind: str) -> None:
        if kind == "ours":
            raise InvalidValueError("ours: named value, allowed values")
        if kind == "value":
            raise ValueError("a plain ValueError from some library")
        raise KeyError("a bug")

    cli.add_command(boom)
    try:
        assert main(["boom", "--kind", "ours"]) == 2
        with pytest.raises(ValueError, match="plain"):
            main(["boom", "--kind", "value"])
        with pytest.raises(KeyError):
            main(["boom", "--kind", "bug"])
    finally:
        del cli.commands["boom"]
    assert issubclass(InvalidValueError, IhtError) and issubclass(InvalidValueError, ValueError)


def test_console_script_error_has_no_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "iht.cli", "train", "--data", "iris", "--sparsity", "99"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("iht: error: sparsity 99 is out of range")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def _option_default(command: str, param: click.Parameter) -> Any:
    """The value the option gives the config when it is not on the command line."""
    value = param.default
    if value is click.core.UNSET:
        value = False if isinstance(param, click.Option) and param.is_flag else None
    callback = param.callback
    if callback is not None and value is not None:
        ctx = click.Context(cli.commands[command])
        value = callback(ctx, param, value)
    return value


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_option_defaults_are_the_config_defaults(command: str) -> None:
    """Every option that fills a config field defaults to that field's default, so --help and
    the run cannot disagree (``iht reproduce --help`` once said float32 for a float64 study)."""
    config = CONFIGS[command]
    checked = 0
    for param in cli.commands[command].params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        try:
            expected = default_of(config, param.name)
        except KeyError:
            continue  # not a config field (--out, --no-progress, ...) or a required one
        if param.name in ("levels", "runs"):  # not given: the config's (or preset's) default
            assert _option_default(command, param) is None
            continue
        assert _option_default(command, param) == expected, param.name
        checked += 1
    assert checked >= 3


def test_reproduce_help_shows_the_studys_dtype(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"[default: {StudyConfig().dtype}]" in out and StudyConfig().dtype == "float64"
    assert "[default: from --preset: quick 100, paper 1000]" in out
    assert "[default: 1-14]" in out
