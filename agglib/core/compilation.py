"""Whether numba has compiled agglib's kernels on this machine yet.

The aggregation and rendering kernels (:mod:`agglib.model.kernels`, :mod:`agglib.stem.kernels`)
are compiled by numba on first use and cached on disk (``cache=True``: next to the modules, or
in numba's user cache folder when the package folder is read-only). The first call on a machine
therefore takes about a minute; :func:`announce_first_compilation` says so before it happens.
"""

from __future__ import annotations

import os
import sys

__all__ = ["kernels_cached", "announce_first_compilation"]


def kernels_cached() -> bool:
    """True when every kernel has an on-disk cache index (compiled before on this machine).
    Unknown (a numba without these internals): True, so that nothing is announced wrongly."""
    from agglib.model import kernels as model_kernels
    from agglib.stem import kernels as stem_kernels

    try:
        for module in (model_kernels, stem_kernels):
            for name in dir(module):
                kernel = getattr(module, name)
                cache = getattr(kernel, "_cache", None)
                if cache is None or not hasattr(cache, "_cache_file") \
                        or getattr(kernel, "targetoptions", {}).get("inline") == "always":   # compiled into its callers
                    continue
                if not os.path.exists(cache._cache_file._index_path):
                    return False
    except Exception:                              # numba internals changed: say nothing
        return True
    return True


def announce_first_compilation(stream=None) -> bool:
    """Print one line to ``stream`` (default stderr) when the kernels are not compiled yet;
    returns whether it printed."""
    if kernels_cached():
        return False
    print("agglib: compiling the numba kernels (first run on this machine only, about a minute) …",
          file=stream or sys.stderr, flush=True)
    return True
