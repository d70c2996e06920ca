"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import subprocess
import sys


def run_kiwi(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The `kiwi` console script in a fresh process: exit codes and stderr as a user sees them."""
    return subprocess.run(
        [sys.executable, "-c", "from recommender.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
