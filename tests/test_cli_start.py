"""``kiwi --help`` imports no command module; the root's table of commands matches the commands."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import typer

from recommender.cli import COMMANDS, load_command


def test_the_table_lists_every_command_with_its_help() -> None:
    defined = set()
    for module in {c.module for c in COMMANDS.values()}:
        group = typer.main.get_group(importlib.import_module(module).commands)
        defined |= set(group.commands)
    assert defined == set(COMMANDS), "COMMANDS in recommender/cli/__init__.py lists every command once"
    for name, entry in COMMANDS.items():
        command = load_command(name)
        assert command.help is not None and command.help.split("\n\n")[0] == entry.help, name


def test_help_imports_no_command_module() -> None:
    probe = (
        "import sys\n"
        "from recommender.cli import main\n"
        "sys.argv = ['kiwi', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "import json\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('recommender.cli.') or m == 'torch')\n"
        "print(json.dumps(loaded), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Commands" in done.stdout and all(name in done.stdout for name in COMMANDS)
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []
