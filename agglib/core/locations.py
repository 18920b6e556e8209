"""Where agglib finds the data it ships and where it keeps what it makes.

* Shipped data (the HAADF reference table, the trained estimators) is package data inside
  ``agglib/data/``, found with :mod:`importlib.resources` wherever agglib is installed.
* What agglib makes (datasets, training runs) goes to the *user data folder*:

  1. ``$AGGLIB_DATA_DIR`` when set;
  2. in a source checkout (``pyproject.toml`` next to the ``agglib`` package), its ``data/``
     folder — where the notebooks and the book keep their runs;
  3. otherwise the platform's user data folder (:func:`platformdirs.user_data_dir`, e.g.
     ``~/.local/share/agglib`` on Linux) — never inside the installed package.
"""

from __future__ import annotations

from importlib import resources
import os
from pathlib import Path

__all__ = ["shipped_data_path", "user_data_dir", "source_checkout"]


def shipped_data_path(*parts: str) -> Path:
    """Path of a file or folder shipped in ``agglib/data/`` (e.g. ``"haadf_reference.json"``)."""
    return Path(str(resources.files("agglib").joinpath("data", *parts)))


def source_checkout() -> Path | None:
    """The repository root when agglib runs from a source checkout (else ``None``)."""
    root = Path(str(resources.files("agglib"))).resolve().parent
    if (root / "pyproject.toml").is_file() and (root / "data").is_dir():
        return root
    return None


def user_data_dir() -> Path:
    """The folder for datasets (``datasets/``) and training runs (``runs/``); see the module docstring."""
    env = os.environ.get("AGGLIB_DATA_DIR")
    if env:
        return Path(env).expanduser()
    checkout = source_checkout()
    if checkout is not None:
        return checkout / "data"
    import platformdirs

    return Path(platformdirs.user_data_dir("agglib", appauthor=False))
