"""Both command lines as an engineer expects them: help everywhere, --version, quiet logs, JSON on stdout only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edge.cli import main as edge_main
from riad_tf.cli import main as riad_main

REPO = Path(__file__).resolve().parents[1]
TENSORFLOW_START_UP = ("I0000", "absl::InitializeLog", "cuda", "oneDNN", "cpu_feature_guard", "E0000", "W0000")


def _commands():
    for label, cli in (("riad-tf", riad_main), ("riad-edge", edge_main)):
        yield label, cli, cli, []
        for name, command in cli.commands.items():
            yield f"{label} {name}", cli, command, [name]


COMMANDS = list(_commands())


@pytest.mark.parametrize("label, root, command, args", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_option_has_help_and_help_runs(label, root, command, args):
    undocumented = [p.opts[0] for p in command.params if isinstance(p, click.Option) and not p.help]
    assert not undocumented, f"{label}: options without help text: {undocumented}"
    result = CliRunner().invoke(root, [*args, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


WORKING_COMMANDS = [c for c in COMMANDS if c[3]]  # the subcommands, not the groups


@pytest.mark.parametrize("label, root, command, args", WORKING_COMMANDS, ids=[c[0] for c in WORKING_COMMANDS])
def test_every_command_help_shows_an_example_that_uses_its_own_options(label, root, command, args):
    text = CliRunner().invoke(root, [*args, "--help"]).output
    assert "Example:" in text, f"{label} --help has no example"
    block = text.split("Example:")[1].split("Options:")[0]
    examples = [line.split("#")[0].split() for line in block.splitlines() if line.strip().startswith(label)]
    assert examples, f"{label}: no example line starts with {label!r}"
    known = {name for p in command.params for name in [*p.opts, *p.secondary_opts]}
    for words in examples:
        unknown = [w.split("=")[0] for w in words if w.startswith("--") and w.split("=")[0] not in known]
        assert not unknown, f"{label}: its example uses options it does not have: {unknown}"


@pytest.mark.parametrize("cli", [riad_main, edge_main], ids=["riad-tf", "riad-edge"])
def test_version(cli):
    from riad_tf import __version__

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_demo_prints_only_json_on_stdout_and_a_plain_line_per_epoch(tmp_path):
    """Not a terminal: stdout is one JSON document, stderr one line per epoch, no escape codes, no TF start-up."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    command = [sys.executable, "-m", "riad_tf.cli", "demo", "--out", str(tmp_path / "demo"), "--epochs", "2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    paths = json.loads(result.stdout)  # python -m json.tool would accept it
    assert Path(paths["report"]).is_file()
    lines = result.stderr.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"], result.stderr
    assert all(" lr " in line and "img/s" in line and "val_loss" in line for line in epochs)
    assert not any(c in result.stderr for c in ("\x1b", "\r", "\x08")), "escape codes in a non-terminal log"
    noise = [line for line in lines if any(mark in line for mark in TENSORFLOW_START_UP)]
    assert not noise, noise
