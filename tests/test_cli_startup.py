"""`import geosr`, `geosr --help` and `geosr info` start without torch (issue 27.10: `geosr info`
took 2.7-9 s and 377 MiB to print metadata)."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from geosr.cli import SUBCOMMANDS, cli

DATA = Path(__file__).parent / "data"
HEAVY = ("torch", "diffusers", "transformers")


def loaded_after(code: str) -> dict:
    """The heavy modules a fresh interpreter has imported after ``code`` (the command's output aside)."""
    probe = f"import sys\n{code}\nprint('\\n' + repr({{m: m in sys.modules for m in {HEAVY!r}}}))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


COMMAND = "from geosr.cli import cli\ntry:\n    cli({args!r})\nexcept SystemExit as exit:\n    assert not exit.code, exit.code"


@pytest.mark.parametrize(
    "code",
    [
        "import geosr",
        COMMAND.format(args=["--help"]),
        COMMAND.format(args=["info", str(DATA / "RGB.byte.tif"), "--json"]),
    ],
    ids=["import", "help", "info"],
)
def test_starts_without_torch(code):
    assert loaded_after(code) == dict.fromkeys(HEAVY, False)


def test_info_still_describes_the_scene():
    code = COMMAND.format(args=["info", str(DATA / "rgbn_suba.tif"), "--json"])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    facts = json.loads(done.stdout)
    assert facts["size"] == [276, 212] and facts["bands"] == 4 and facts["nodata"] == 0.0


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_the_help_listing_says_what_each_command_says(name):
    """`geosr --help` lists each subcommand without importing it: its line must be the start of
    the command's own help."""
    module, attribute, summary = SUBCOMMANDS[name]
    command = getattr(importlib.import_module(module), attribute)
    assert cli.get_command(None, name) is command
    own = " ".join((command.short_help or command.help).split())
    assert own.startswith(summary.rstrip(".")), (summary, own)


def test_ctrl_c_before_a_command_takes_signals_is_a_stop_not_a_bug(monkeypatch):
    """Found by review: Ctrl-C in a command's first second (before it handles stop signals)
    ended in click's "Aborted!" with exit 1, the status the README gives a bug."""
    import geosr.cli.upscale

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(geosr.cli.upscale, "setup_logging", interrupted)
    result = CliRunner().invoke(cli, ["upscale", "in.tif", "out.tif"])
    assert result.exit_code == 8 and "stopped by SIGINT before any work was kept" in result.output
