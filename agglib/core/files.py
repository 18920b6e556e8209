"""Safe file writes: atomic files and output folders that never lose a user's files.

Atomic writes: a temporary file in the same folder, fsync'd, then renamed.

A reader (or a resumed job) therefore sees either the old file or the complete new one,
never a half-written file, even if the process is killed mid-write.
"""

from __future__ import annotations

from contextlib import contextmanager
import json
import os
from pathlib import Path

__all__ = ["atomic_open", "atomic_write_text", "atomic_write_bytes", "OUTPUT_MARKER", "OutputFolderError", "check_writable",
           "check_outside_inputs", "check_output_dir", "claim_output_dir", "read_output_marker"]


@contextmanager
def atomic_open(path, mode: str = "wb"):
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


#: Written into every output folder agglib makes: which files in it agglib wrote. ``--overwrite``
#: replaces only those; agglib never deletes or replaces a file it did not write.
OUTPUT_MARKER = ".agglib-output.json"


class OutputFolderError(FileExistsError):
    """An output folder agglib refuses to write into, with the reason and what to do."""


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_outside_inputs(out_dir, inputs) -> None:
    """Refuse an output folder that is, contains or lies inside one of ``inputs`` (files or folders)."""
    out = Path(out_dir).expanduser().resolve()
    for item in inputs:
        src = Path(item).expanduser().resolve()
        if _within(src, out):
            what = "is" if src == out else "contains"
            raise OutputFolderError(f"the output folder {out} {what} the input {src}; agglib never writes "
                                    "where its inputs are: choose a new folder, e.g. --out results")
        if src.is_dir() and _within(out, src):
            raise OutputFolderError(f"the output folder {out} lies inside the input folder {src}; choose a "
                                    "folder outside it, e.g. next to it")


def read_output_marker(out_dir) -> dict | None:
    """The marker of a folder agglib made (``None`` when it has none)."""
    marker = Path(out_dir) / OUTPUT_MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
        files = data["files"]
        if not isinstance(files, list):
            raise TypeError("files is not a list")
    except (ValueError, KeyError, TypeError) as err:
        raise OutputFolderError(f"{marker} is damaged ({err}); agglib cannot tell which files in {out_dir} "
                                "it wrote: choose another output folder") from None
    return data


def check_writable(out_dir) -> None:
    """Raise :class:`OutputFolderError` unless files can be created in ``out_dir`` (or, when it does
    not exist yet, in its nearest existing parent folder). Probed with an anonymous temporary file,
    which leaves nothing behind."""
    import tempfile

    out = Path(out_dir).absolute()
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        where = out if probe == out else f"{probe} (to create {out})"
        raise OutputFolderError(f"cannot write into {where}: {err.strerror or err}; choose an output folder you "
                                "can write to") from None


def check_output_dir(out_dir, names, *, inputs=(), overwrite: bool = False) -> set:
    """Check, without writing, that ``out_dir`` can receive the files ``names`` (see
    :func:`claim_output_dir`); returns the names agglib already owns there."""
    out = Path(out_dir)
    check_outside_inputs(out, inputs)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out} is a file, not a folder; choose a folder for the output")
    check_writable(out)
    marker = read_output_marker(out) if out.is_dir() else None
    if out.is_dir() and marker is None and any(out.iterdir()):
        raise OutputFolderError(f"{out} already holds files agglib did not write; agglib only writes into a "
                                "new or empty folder, or one it made itself: choose another output folder")
    owned = set(marker["files"]) if marker else set()
    for name in names:
        target = out / name
        if target.exists() or target.is_symlink():
            if name not in owned:
                raise OutputFolderError(f"{target} exists and was not written by agglib; agglib never replaces "
                                        "it: move it away or choose another output folder")
            if not overwrite:
                raise OutputFolderError(f"{target} exists (written by {marker.get('command', 'agglib')}); pass "
                                        "--overwrite (overwrite=True) to replace agglib's files, or choose "
                                        "another output folder")
    return owned


def claim_output_dir(out_dir, names, *, inputs=(), overwrite: bool = False, command: str = "agglib") -> Path:
    """Make ``out_dir`` ready to receive the files ``names``, losing nothing agglib did not write.

    Refused (:class:`OutputFolderError`): a folder that is, contains or lies inside an input; an
    existing folder that is not empty and was not made by agglib (no :data:`OUTPUT_MARKER`); a file
    of ``names`` already there that agglib did not write; one agglib wrote unless ``overwrite``.
    Otherwise the folder is created and the marker lists ``names`` (before they are written, so
    an interrupted write leaves files agglib still knows as its own). Returns the folder.
    """
    out = Path(out_dir)
    owned = check_output_dir(out, names, inputs=inputs, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    record = {"written_by": "agglib", "command": command, "files": sorted(owned | set(map(str, names)))}
    atomic_write_text(out / OUTPUT_MARKER, json.dumps(record, indent=1))
    return out
