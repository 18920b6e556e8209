"""Reading measured HAADF-STEM images with their pixel size.

TIFF files are read with tifffile (pixel size from the ImageJ ``unit`` and the X resolution, or
from a centimetre/inch resolution unit); PNG with Pillow (no pixel size: give it); DM3/DM4,
SER/EMI and MRC through RosettaSciIO's readers (pixel size from the calibrated axes); EMD and
HSPY (HDF5 files) too, with the ``io`` extra (``pip install "agglib[io]"``: h5py). A file without a pixel
size needs ``pixel_size_nm``; one with a pixel size keeps its own unless ``pixel_size_nm`` is
given explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MeasuredImage", "read_image", "SUPPORTED_SUFFIXES", "ImageInputError"]

_TO_NM = {"nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3,
          "microns": 1e3, "micrometer": 1e3, "micrometre": 1e3, "a": 0.1, "å": 0.1, "angstrom": 0.1,
          "pm": 1e-3, "m": 1e9, "mm": 1e6, "cm": 1e7}

_RSCIIO = {".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph", ".emd": "emd", ".ser": "tia",
           ".emi": "tia", ".mrc": "mrc", ".hspy": "hspy"}
#: Formats whose reader needs the ``io`` extra, and the package it needs.
IO_EXTRA = {".emd": "h5py", ".hspy": "h5py"}
SUPPORTED_SUFFIXES = (".tif", ".tiff", ".png", *_RSCIIO)


class ImageInputError(ValueError):
    """A measured image that cannot be used, with the reason."""


@dataclass
class MeasuredImage:
    """A 2D image [detector units] and its pixel size [nm]."""

    data: np.ndarray
    pixel_size_nm: float
    path: str
    pixel_size_source: str

    @property
    def field_of_view_nm(self) -> float:
        return float(min(self.data.shape) * self.pixel_size_nm)


def _unit_to_nm(unit) -> float | None:
    if unit is None:
        return None
    return _TO_NM.get(str(unit).strip().lower().replace("\\u00b5", "µ"))


def _tiff_pixel_size(tif) -> float | None:
    page = tif.pages[0]
    tags = page.tags
    if "XResolution" not in tags:
        return None
    num, den = tags["XResolution"].value
    if num == 0:
        return None
    per_unit = num / den                                   # pixels per unit
    res_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 1
    if res_unit == 2:                                      # inch
        return 2.54e7 / per_unit
    if res_unit == 3:                                      # centimetre
        return 1e7 / per_unit
    meta = tif.imagej_metadata or {}
    factor = _unit_to_nm(meta.get("unit"))
    if factor is None:
        return None
    return factor / per_unit


def _read_tiff(path: Path):
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError) as err:
        raise ImageInputError(f"{path}: not a readable TIFF image ({err}); check that the file is complete "
                              "and really a TIFF (not another file renamed .tif)") from None
    with tif:
        if len(tif.series) and len(tif.series[0].shape) > 2 and tif.series[0].shape[-1] in (3, 4) \
                and tif.pages[0].photometric in (2,):
            raise ImageInputError(f"{path}: an RGB image; give the raw single-channel HAADF image")
        try:
            data = tif.asarray()
        except MemoryError:
            raise
        except Exception as err:               # truncated strips, bad compression
            raise ImageInputError(f"{path}: the image data cannot be read ({type(err).__name__}: {err}); the "
                                  "file is probably incomplete: copy it again from the microscope PC") from None
        return data, _tiff_pixel_size(tif)


def _read_png(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "I", "I;16", "I;16B", "F"):
                raise ImageInputError(f"{path}: a PNG in mode {im.mode}; give the raw single-channel HAADF image "
                                      "(8/16-bit greyscale)")
            return np.asarray(im), None
    except UnidentifiedImageError:
        raise ImageInputError(f"{path}: not a readable PNG image (damaged, or another kind of file "
                              "named .png)") from None


def _read_rsciio(path: Path):
    import importlib

    suffix = path.suffix.lower()
    try:
        module = importlib.import_module(f"rsciio.{_RSCIIO[suffix]}")
    except ModuleNotFoundError as err:
        raise ImageInputError(f"{path}: reading {suffix} files needs {IO_EXTRA.get(suffix, err.name)}, "
                              "which is not installed: pip install \"agglib[io]\" (or convert the image "
                              "to TIFF)") from None
    try:
        signals = module.file_reader(str(path))
    except (ImageInputError, MemoryError):
        raise
    except Exception as err:                   # each reader fails in its own way on a damaged file
        raise ImageInputError(f"{path}: not a readable {suffix} file ({type(err).__name__}: {err}); "
                              "check that the file is complete, or export it again as TIFF") from None
    images = [s for s in signals if np.asarray(s["data"]).ndim >= 2]
    if not images:
        raise ImageInputError(f"{path}: no image in the file")
    if len(images) > 1:
        raise ImageInputError(f"{path}: holds {len(images)} images; give one image per file")
    sig = images[0]
    data = sig["data"]
    pixel = None
    axes = [a for a in sig.get("axes", []) if not a.get("navigate", False)]
    if len(axes) >= 2:
        factor = _unit_to_nm(axes[-1].get("units"))
        if factor is not None and axes[-1].get("scale", 1.0) > 0:
            pixel = float(axes[-1]["scale"]) * factor
    return data, pixel


def read_image(path, pixel_size_nm: float | None = None) -> MeasuredImage:
    """Read one single-channel image and its pixel size [nm].

    Raises
    ------
    ImageInputError
        Unknown file type, RGB, a stack, NaN/inf values, an all-constant image, or no pixel size
        in the file and none given.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise ImageInputError(f"{path}: no such file or folder")
    if path.is_dir():
        raise ImageInputError(f"{path} is a folder; give image files (or, on the command line, the folder itself)")
    if suffix not in SUPPORTED_SUFFIXES:
        raise ImageInputError(f"{path}: unknown file type {path.suffix!r}; accepted: "
                              f"{', '.join(sorted(set(SUPPORTED_SUFFIXES)))}")
    readers = {".tif": _read_tiff, ".tiff": _read_tiff, ".png": _read_png}
    data, found = readers.get(suffix, _read_rsciio)(path)
    data = np.asarray(data)
    if data.dtype.names is not None or (data.ndim == 3 and data.shape[-1] in (3, 4)):
        raise ImageInputError(f"{path}: an RGB image; give the raw single-channel HAADF image")
    data = np.squeeze(data)
    if data.ndim == 3:
        raise ImageInputError(f"{path}: a stack of {data.shape[0]} images; give one image per file")
    if data.ndim != 2:
        raise ImageInputError(f"{path}: expected a 2D image, got shape {data.shape}")
    data = data.astype(np.float64)
    if not np.all(np.isfinite(data)):
        raise ImageInputError(f"{path}: contains NaN or infinite values")
    if float(data.max()) == float(data.min()):
        raise ImageInputError(f"{path}: all pixels equal {data.flat[0]:g}; nothing to analyse")
    if pixel_size_nm is not None:
        from agglib.core.validation import check_range

        check_range("pixel_size_nm", pixel_size_nm, low=0.0, high=1000.0, low_inclusive=False, unit="nm")
        return MeasuredImage(data, float(pixel_size_nm), str(path), "given")
    if found is None:
        raise ImageInputError(f"{path}: the file has no pixel size; give it with --pixel-size [nm]")
    return MeasuredImage(data, float(found), str(path), "file metadata")
