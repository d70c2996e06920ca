"""Files the package reads at run time: inside the installed wheel, or in the source checkout.

The wheel maps the checkout's top-level ``corpora/`` and ``annotation_guidelines/`` into
``recommender/_data/`` (pyproject.toml, ``force-include``); an editable install or a checkout reads
them where they are. Either way callers get a real folder: pip installs wheels unpacked.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from recommender.errors import ConfigError

PACKAGED_DIR = "_data"
# The folder above the package: the checkout's root for a source tree or an editable install.
CHECKOUT = Path(__file__).resolve().parents[1]


def packaged_path(relative: str) -> Path:
    """The run-time file or folder ``relative`` (a checkout path such as ``corpora/sample``)."""
    packaged = resources.files("recommender").joinpath(PACKAGED_DIR, *relative.split("/"))
    if packaged.is_file() or packaged.is_dir():
        if not isinstance(packaged, Path):
            raise ConfigError(
                f"the package is not installed as files [{packaged}]; install the wheel with pip"
            )
        return packaged
    return CHECKOUT / relative
