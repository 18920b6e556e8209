"""A profile for your microscope and your particles, written from your images and measurements.

:func:`write_profile` (``agglib profiles write``) reads the images a user will fit (their pixel
size and size give the field of view) and a CSV of measured particle radii (per material, or one
list for both), optionally measured particle counts, and writes a profile file the user owns::

    agglib profiles write my_sample.yaml --images images/ --radii radii.csv --n-particles counts.csv

Every command that takes ``--profile`` takes that file; ``dataset build``, ``train-estimator`` and
``fit`` then run at it unchanged. The sizes of the runs (configurations, epochs, …) are those of
the ``base`` profile (``quick``); the images are recorded with a randomised acquisition (the robust
estimators' setting: the fitted images' gain, contrast and resampling are unknown).
"""

from __future__ import annotations

import csv
from dataclasses import replace
import io
from pathlib import Path

import numpy as np
import yaml

from agglib.core.files import atomic_write_text
from agglib.core.validation import check_range
from agglib.core.wording import counted
from agglib.fit.io import SUPPORTED_SUFFIXES, ImageInputError, read_image
from agglib.model.particles import ParticleCount, ParticleModel, RadiusDistribution
from agglib.profiles import load_profile

__all__ = ["write_profile", "read_radii_csv", "read_counts_csv", "images_field_of_view"]

#: Names of the materials in a radii CSV's ``material`` column (case-insensitive).
MATERIAL_ALIASES = {"wo3": "WO3", "w": "WO3", "tungsten": "WO3", "tio2": "TiO2", "ti": "TiO2", "titania": "TiO2"}


class ProfileInputError(ValueError):
    """Input of :func:`write_profile` that cannot make a profile, with the file and value."""


def _text(path: Path) -> str:
    """The file's text: UTF-8 (with or without a byte-order mark) or UTF-16 with one (Excel's
    "Unicode text"); anything else is refused naming the file."""
    data = path.read_bytes()
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ProfileInputError(f"{path}: not a text CSV file (neither UTF-8 nor UTF-16); save it as CSV (UTF-8)") from None


def _rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a CSV with a header line; commas, semicolons or tabs between fields."""
    path = Path(path)
    if path.is_dir():
        raise ProfileInputError(f"{path}: a folder; give a CSV file")
    if not path.is_file():
        raise ProfileInputError(f"{path}: no such file")
    text = _text(path)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ProfileInputError(f"{path}: the CSV is empty (expected a header line and one row per measurement)")
    if len(lines) < 2:
        raise ProfileInputError(f"{path}: the CSV has a header line ({lines[0].strip()[:80]}) but no rows; expected "
                                "one row per measurement below it")
    delimiter = max(",;\t", key=lambda d: lines[0].count(d)) if any(d in lines[0] for d in ",;\t") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    rows = []
    for row in reader:
        if any(v not in (None, "") for v in row.values()):
            rows.append((reader.line_num, row))
    return rows


def _number(path, line, column, text) -> float:
    """A measured value > 0 (a decimal comma is read as a point)."""
    text = "" if text is None else str(text).strip()
    if not text:
        raise ProfileInputError(f"{path}, line {line}: no {column} value")
    try:
        value = float(text.replace(",", ".") if text.count(",") == 1 and "." not in text else text)
    except ValueError:
        raise ProfileInputError(f"{path}, line {line}: {column}={text!r} is not a number") from None
    if not np.isfinite(value) or value <= 0:
        raise ProfileInputError(f"{path}, line {line}: {column}={text} must be > 0")
    return value


def read_radii_csv(path) -> dict:
    """Measured radii [nm] per material from a CSV with a ``radius_nm`` (or ``diameter_nm``)
    column and, optionally, a ``material`` column (WO3 / TiO2); without it, one list for both.

    Returns ``{"WO3": array, "TiO2": array}``.
    """
    rows = _rows(path)
    columns = {c.strip().lower(): c for c in rows[0][1] if c is not None}
    size = "radius_nm" if "radius_nm" in columns else "diameter_nm" if "diameter_nm" in columns else None
    if size is None:
        raise ProfileInputError(f"{path}: no radius_nm (or diameter_nm) column; found {', '.join(columns.values())}: "
                                "name the column of radii [nm] radius_nm (or of diameters diameter_nm)")
    factor = 0.5 if size == "diameter_nm" else 1.0
    out = {"WO3": [], "TiO2": []}
    for line, row in rows:
        value = factor * _number(path, line, size, row[columns[size]])
        if "material" in columns:
            text = str(row[columns["material"]] or "").strip()
            material = MATERIAL_ALIASES.get(text.lower())
            if material is None:
                raise ProfileInputError(f"{path}, line {line}: material={text!r}; accepted: WO3, TiO2")
            out[material].append(value)
        else:
            out["WO3"].append(value)
            out["TiO2"].append(value)
    for material, values in out.items():
        if len(values) < 2:
            raise ProfileInputError(f"{path}: {counted(len(values), material + ' radius')}; give at least 2 per "
                                    "material (or leave out the material column: one list for both)")
    return {k: np.asarray(v) for k, v in out.items()}


def read_counts_csv(path) -> np.ndarray:
    """Measured numbers of primary particles per aggregate from a CSV with an ``n_particles`` column."""
    rows = _rows(path)
    columns = {c.strip().lower(): c for c in rows[0][1] if c is not None}
    if "n_particles" not in columns:
        raise ProfileInputError(f"{path}: no n_particles column; found {', '.join(columns.values())}: name the "
                                "column of particles per aggregate n_particles")
    counts = []
    for line, row in rows:
        value = _number(path, line, "n_particles", row[columns["n_particles"]])
        if value != int(value) or value > 10_000:
            raise ProfileInputError(f"{path}, line {line}: n_particles={value:g} must be a whole number in 1–10000")
        counts.append(int(value))
    if len(counts) < 2:
        raise ProfileInputError(f"{path}: 1 particle count; give at least 2")
    return np.asarray(counts)


def images_field_of_view(images, pixel_size_nm: float | None = None) -> tuple[float, list]:
    """The field of view every image holds [nm] (the smallest one's) and the images read.

    ``images``: files or folders of image files; ``pixel_size_nm`` for files without one.
    """
    files = []
    for p in map(Path, images):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise ProfileInputError(f"{p}: no such file or folder")
    if not files:
        raise ProfileInputError(f"{', '.join(map(str, images))}: no image files of the accepted types "
                                f"({', '.join(sorted(set(SUPPORTED_SUFFIXES)))})")
    read = []
    for f in files:
        try:
            read.append(read_image(f, pixel_size_nm))
        except ImageInputError as err:
            raise ProfileInputError(str(err)) from None
    return min(im.field_of_view_nm for im in read), read


def write_profile(out, images, radii_csv, *, n_particles=None, pixel_size_nm: float | None = None,
                  dose_e_per_A2: float = 149.0, base: str = "quick", image_size_px: int | None = None,
                  overwrite: bool = False) -> Path:
    """Write a profile file for your images and particles; returns its path.

    Parameters
    ----------
    out : path-like
        The profile file to write (``*.yaml``); an existing file is refused unless ``overwrite``
        and it is a profile agglib wrote.
    images : sequence of path-like
        The images you will fit, or folders of them: their smallest field of view becomes the
        profile's (``image_size_px`` pixels across it).
    radii_csv : path-like
        Measured particle radii [nm] (see :func:`read_radii_csv`).
    n_particles : path-like or (int, int), optional
        A CSV of measured particles per aggregate (:func:`read_counts_csv`) or a range
        (low, high); default: the paper's 20–80.
    pixel_size_nm : float, optional
        Pixel size [nm] of the images, overriding the files' own (as ``agglib fit --pixel-size``);
        needed for files that carry none.
    dose_e_per_A2 : float
        Electron dose of your images [e/Å²] (the simulated images are made at it).
    base : str
        The shipped profile whose run sizes the file keeps (default ``quick``).
    image_size_px : int, optional
        Side of the estimator's images [px] (default: the base profile's).
    overwrite : bool
    """
    out = Path(out)
    if out.suffix not in (".yaml", ".yml"):
        raise ProfileInputError(f"{out}: a profile file ends in .yaml or .yml")
    if out.exists() and not (overwrite and out.read_text().startswith(_HEADER)):
        raise FileExistsError(f"{out} exists; agglib writes a new profile file"
                              + (" (it replaces only profile files it wrote)" if overwrite else
                                 " (--overwrite replaces one agglib wrote)"))
    base_profile = load_profile(base)
    size_px = int(base_profile.image_size_px if image_size_px is None else image_size_px)
    check_range("--image-size-px", size_px, low=16, high=4096, integer=True)
    check_range("--dose", dose_e_per_A2, low=0.0, high=1e7, low_inclusive=False, unit="e/Å²")
    if pixel_size_nm is not None:
        check_range("--pixel-size", pixel_size_nm, low=0.0, high=100.0, low_inclusive=False, unit="nm")
    fov, read = images_field_of_view(images, pixel_size_nm)
    radii = read_radii_csv(radii_csv)
    if n_particles is None:
        count = ParticleCount()
    elif isinstance(n_particles, (tuple, list)):
        low, high = n_particles
        try:
            count = ParticleCount(low, high)                      # its checks: 1 ≤ LOW ≤ HIGH ≤ 10000
        except ValueError as err:
            raise ProfileInputError(f"--n-particles {low}-{high}: give LOW-HIGH with 1 ≤ LOW ≤ HIGH ≤ 10000 "
                                    f"({err})") from None
    else:
        count = ParticleCount.from_measured(read_counts_csv(n_particles))
    particles = ParticleModel(RadiusDistribution.from_measured(radii["WO3"]),
                              RadiusDistribution.from_measured(radii["TiO2"]), count)
    fields = {"base": base, "description": f"Your images: {fov:.1f} nm fields of view, {particles.describe()}.",
              "image_size_px": size_px, "pixel_size_nm": round(fov / size_px, 6),
              "dose_e_per_A2": float(dose_e_per_A2), "acquisition": "randomised", "particles": particles.to_dict()}
    replace(base_profile, **{k: v for k, v in fields.items() if k != "base"})     # refused here, not at first use
    pixel_sizes = sorted({round(im.pixel_size_nm, 4) for im in read})
    header = [_HEADER,
              f"# from {len(read)} image(s) ({', '.join(f'{p:g}' for p in pixel_sizes)} nm/px; smallest field of view "
              f"{fov:.1f} nm), radii from {radii_csv}"
              + (f", particle counts from {n_particles}" if n_particles is not None and not isinstance(n_particles, (tuple, list)) else ""),
              "# Use it wherever a command takes --profile, e.g.",
              f"#   agglib train-estimator --profile {out}",
              f"#   agglib fit <images> --models <data>/runs/{out.stem}-…/sets --out result/",
              "# Run sizes (configurations, epochs, …) are the base profile's; any profile field may be added here."]
    atomic_write_text(out, "\n".join(header) + "\n" + yaml.safe_dump(fields, sort_keys=False, allow_unicode=True))
    return out


_HEADER = "# agglib profile file (agglib profiles write)"
