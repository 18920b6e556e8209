"""Whether numba has compiled agglib's kernels on this machine yet.

The aggregation and rendering kernels (:mod:`agglib.model.kernels`, :mod:`agglib.stem.kernels`)
are compiled by numba on first use and cached on disk (``cache=True``: next to the modules, or
in numba's user cache folder when the package folder is read-only). The first call on a machine
therefore takes about a minute; :func:`announce_first_compilation` says so before it happens.
"""

from __future__ import annotations

import os
import sys

__all__ = ["kernels_cached", "announce_first_compilation", "KERNEL_MODULES"]


#: The kernel modules by the name the CLI's commands give them.
KERNEL_MODULES = {"model": "agglib.model.kernels", "stem": "agglib.stem.kernels"}


def kernels_cached(modules=tuple(KERNEL_MODULES)) -> bool:
    """True when each of ``modules`` (names of :data:`KERNEL_MODULES`) has a kernel with an on-disk
    cache index: compiled before on this machine. A command compiles only the kernels it calls
    (``fit`` never the renderer's), so a module counts as compiled from its first cached kernel on —
    asking for all of them would announce a compilation on every run of a command that leaves some
    unused. Unknown (a numba without these internals): True, so that nothing is announced wrongly."""
    import importlib

    def cached(kernel) -> bool:
        cache = getattr(kernel, "_cache", None)
        if cache is None or not hasattr(cache, "_cache_file") \
                or getattr(kernel, "targetoptions", {}).get("inline") == "always":   # compiled into its callers
            return False
        return os.path.exists(cache._cache_file._index_path)

    try:
        for name in modules:
            module = importlib.import_module(KERNEL_MODULES[name])
            if not any(cached(getattr(module, attr)) for attr in dir(module)):
                return False
    except Exception:                              # numba internals changed: say nothing
        return True
    return True


def announce_first_compilation(stream=None, modules=tuple(KERNEL_MODULES)) -> bool:
    """Print one line to ``stream`` (default stderr) when the kernels of ``modules`` (the command's:
    names of :data:`KERNEL_MODULES`) are not compiled yet; returns whether it printed."""
    if kernels_cached(modules):
        return False
    print("agglib: compiling the numba kernels (first run on this machine only, about a minute) …",
          file=stream or sys.stderr, flush=True)
    return True
