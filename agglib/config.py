"""One configuration object for agglib, backed by YAML.

Defaults live in ``agglib/config.yaml``; a user file (``$AGGLIB_CONFIG`` or
``~/.config/agglib/config.yaml``) overrides them. Change values at run time with
:func:`set`, which also works as a context manager::

    import agglib
    agglib.config.set(progress_bars=False)          # for the session
    with agglib.config.set(workers=1):              # for a block only
        ...
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

_DEFAULTS_FILE = Path(__file__).with_name("config.yaml")


def _user_file() -> Path:
    env = os.environ.get("AGGLIB_CONFIG")
    return Path(env) if env else Path.home() / ".config" / "agglib" / "config.yaml"


def _load() -> dict:
    values = yaml.safe_load(_DEFAULTS_FILE.read_text()) or {}
    user = _user_file()
    if user.is_file():
        extra = yaml.safe_load(user.read_text()) or {}
        unknown = extra.keys() - values.keys()
        if unknown:
            raise KeyError(f"unknown agglib config keys {sorted(unknown)} in {user}; "
                           f"known keys: {sorted(values)}")
        values.update(extra)
    return values


_values: dict = _load()


def get(key: str):
    """Current value of ``key``."""
    try:
        return _values[key]
    except KeyError:
        raise KeyError(f"unknown agglib config key {key!r}; known keys: {sorted(_values)}") from None


def to_dict() -> dict:
    """A copy of all current values."""
    return dict(_values)


class set:  # noqa: A001 - mirrors dask/abTEM's ``config.set``
    """Set configuration values; restores the previous ones when used as a context manager."""

    def __init__(self, **values):
        unknown = [k for k in values if k not in _values]
        if unknown:
            raise KeyError(f"unknown agglib config keys {unknown}; known keys: {sorted(_values)}")
        self._old = {k: _values[k] for k in values}
        _values.update(values)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _values.update(self._old)
        return False


def reset() -> None:
    """Reload defaults and the user file, dropping run-time changes."""
    _values.clear()
    _values.update(_load())
