"""Virtual HAADF-STEM images of hetero-aggregates (paper §2.1.4).

Steps, in the order of the paper:

1. a uniformly random 3D orientation of the aggregate (about its centre of mass);
2. projection along z (the beam direction); the field of view is centred on the projected
   bounding box, as a microscopist centres an aggregate;
3. per particle an anti-aliased thickness map (chord length 2·√(r² − d²) [nm], averaged over
   ``supersample``² points per pixel);
4. per particle a random phase and crystal orientation, uniformly among the table's curves of
   its material, turning thickness into the HAADF fraction of the incident probe;
5. per particle a Gaussian defocus blur with σ = abs(z)·tan(β), z the particle centre's height
   above or below the focal plane. **The focal plane is z = 0, the aggregate's centre of mass**
   (r³-weighted), i.e. the microscopist focuses on the middle of the aggregate;
6. the sum over particles, times the electrons per pixel (dose × pixel area) — the noise-free
   image in detector counts;
7. scan noise: each scan line is displaced along x by a normal deviate of SD
   ``scan_noise_nm``;
8. shot noise: every pixel is a Poisson count with that mean.

Images are float32 detector counts [electrons]. Pixel values are independent of the number of
workers: every random number comes from the ``seed`` given.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import partial
import math

import numpy as np

from agglib.core.parallel import ordered_map
from agglib.core.seeding import as_generator, spawn_seeds
from agglib.core.validation import check_range
from agglib.model.aggregate import MATERIAL_NAMES, Aggregate
from agglib.model.kernels import random_rotation
from agglib.stem.kernels import noisy_counts, render_particles
from agglib.stem.reference import MATERIALS, HaadfTable, load_reference_table

__all__ = ["StemSettings", "RenderResult", "render_stem", "render_stem_many", "projected_extent_nm",
           "projected_extents",
           "DEFAULT_PIXEL_SIZE_NM"]

#: Default pixel size [nm]: with it ≥ 95 % of aggregates of the paper's grid, in random
#: orientation, lie wholly inside 512 × 512 pixels (measured in notebook 02 and by
#: ``tests/test_stem.py``; see the book's STEM chapter for the number).
DEFAULT_PIXEL_SIZE_NM = 0.85


@dataclass(frozen=True)
class StemSettings:
    """Acquisition settings of a virtual HAADF-STEM image.

    Parameters
    ----------
    image_size_px : int
        Image side [px] (square images).
    pixel_size_nm : float
        Pixel size [nm].
    dose_e_per_A2 : float
        Electron dose [e/Å²]; the paper's 149 e/Å² (Krause et al. 2016).
    scan_noise_nm : float
        SD of the per-line beam displacement along the fast scan direction [nm]; the
        paper's 0.01 nm (Jones & Nellist 2013).
    semiangle_mrad : float
        Probe semi-convergence angle β [mrad]; sets the defocus blur σ = abs(z)·tan β.
    noise : bool
        Apply scan and shot noise (False: the expected counts).
    blur : bool
        Apply the defocus blur.
    supersample : int
        Sub-samples per pixel side in the thickness maps (anti-aliasing).
    detector_efficiency : float
        Mean sensitivity of the annular detector over its angular range (the table assumes an
        ideal detector, 1); :func:`agglib.stem.measurements.detector_efficiency` computes it from
        a measured sensitivity curve (the published one gives 0.72; notebook 2).
    """

    image_size_px: int = 512
    pixel_size_nm: float = DEFAULT_PIXEL_SIZE_NM
    dose_e_per_A2: float = 149.0
    scan_noise_nm: float = 0.01
    semiangle_mrad: float = 21.1
    noise: bool = True
    blur: bool = True
    supersample: int = 4
    detector_efficiency: float = 1.0

    def __post_init__(self):
        check_range("image_size_px", self.image_size_px, low=8, high=8192, integer=True, unit="px")
        check_range("pixel_size_nm", self.pixel_size_nm, low=0.0, high=100.0, low_inclusive=False,
                    unit="nm")
        check_range("dose_e_per_A2", self.dose_e_per_A2, low=0.0, high=1e7, low_inclusive=False,
                    unit="e/Å²")
        check_range("scan_noise_nm", self.scan_noise_nm, low=0.0, high=100.0, unit="nm")
        check_range("semiangle_mrad", self.semiangle_mrad, low=0.0, high=200.0, unit="mrad")
        check_range("supersample", self.supersample, low=1, high=32, integer=True)
        check_range("detector_efficiency", self.detector_efficiency, low=0.0, high=1.0, low_inclusive=False)

    @property
    def field_of_view_nm(self) -> float:
        """Side of the image [nm]."""
        return self.image_size_px * self.pixel_size_nm

    @property
    def electrons_per_pixel(self) -> float:
        """The incident electrons per pixel, dose [e/Å²] × pixel area [Å²]."""
        return self.dose_e_per_A2 * (self.pixel_size_nm * 10.0) ** 2

    def replace(self, **changes) -> "StemSettings":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The settings; fields added later appear only when not at their default, so the identity
        of stores and checkpoints made before them is unchanged."""
        out = asdict(self)
        for name, default in _LATER_FIELDS.items():
            if out[name] == default:
                del out[name]
        return out


#: StemSettings fields added after the first datasets were made, with their defaults.
_LATER_FIELDS = {"detector_efficiency": 1.0}


@dataclass
class RenderResult:
    """An image with what went into it (``render_stem(..., return_maps=True)``).

    Attributes
    ----------
    image : (H, W) float32
        The image [detector counts].
    expected : (H, W) float32
        Noise-free image [counts]: the sum of ``material_maps``.
    material_maps : dict
        Noise-free, blurred counts per material (``"WO3"``, ``"TiO2"``).
    thickness_maps : dict
        Projected, unblurred thickness per material [nm].
    rotation : (3, 3) array
        Orientation applied to the aggregate.
    curve_names : list of str
        ``phase/orientation`` of the HAADF curve used by each particle.
    sigma_nm : (N,) array
        Defocus blur per particle [nm].
    centre_px : (N, 2) array
        Projected particle centres (x, y) [px].
    in_field : bool
        Whether every particle lies wholly inside the image.
    settings : StemSettings
    """

    image: np.ndarray
    expected: np.ndarray
    material_maps: dict
    thickness_maps: dict
    rotation: np.ndarray
    curve_names: list
    sigma_nm: np.ndarray
    centre_px: np.ndarray
    in_field: bool
    settings: StemSettings


def _check_aggregate(aggregate) -> Aggregate:
    if not isinstance(aggregate, Aggregate):
        raise TypeError(f"aggregate must be an agglib.Aggregate, got {type(aggregate).__name__}")
    if aggregate.n_particles == 0:
        raise ValueError("aggregate has no particles; cannot render an empty aggregate")
    if not np.all(np.isfinite(aggregate.positions)):
        bad = int(np.sum(~np.all(np.isfinite(aggregate.positions), axis=1)))
        raise ValueError(f"aggregate has {bad} particle(s) with NaN or infinite positions; "
                         "positions must be finite [nm]")
    if not np.all(np.isfinite(aggregate.radii)) or np.any(aggregate.radii <= 0):
        raise ValueError(f"aggregate radii must be finite and > 0 nm; got min "
                         f"{np.nanmin(aggregate.radii):g} nm")
    return aggregate


def projected_extent_nm(aggregate: Aggregate, rotation: np.ndarray | None = None) -> float:
    """Side of the smallest axis-aligned square holding the projected particles [nm]."""
    pos = aggregate.positions if rotation is None else aggregate.positions @ np.asarray(rotation).T
    r = aggregate.radii
    span_x = np.max(pos[:, 0] + r) - np.min(pos[:, 0] - r)
    span_y = np.max(pos[:, 1] + r) - np.min(pos[:, 1] - r)
    return float(max(span_x, span_y))


def projected_extents(aggregates, seed=None) -> np.ndarray:
    """:func:`projected_extent_nm` of each aggregate in a uniformly random orientation [nm]."""
    rng = as_generator(seed)
    return np.array([projected_extent_nm(a, random_rotation(rng)) for a in aggregates])


_CURVE_CACHE: dict = {}


def _table_arrays(table: HaadfTable):
    """Curves of both materials stacked (WO3 rows first), slopes, offsets and names."""
    key = id(table)
    if key not in _CURVE_CACHE:
        stacks, names, offsets, counts = [], [], [], []
        for material in MATERIALS:                 # index = particle label
            phases = table.phases_of(material)
            if not phases:
                raise ValueError(f"the HAADF table has no phase of {material}")
            offsets.append(sum(counts))
            block = table.curve_stack(material)
            counts.append(block.shape[0])
            stacks.append(block)
            names += [f"{p}/{o}" for p in phases for o in table.curves[p]]
        curves = np.ascontiguousarray(np.concatenate(stacks), dtype=np.float64)
        _CURVE_CACHE[key] = (table, curves, table.extrapolation_slopes(curves),
                             np.array(offsets), np.array(counts), names)
    return _CURVE_CACHE[key][1:]


def render_stem(aggregate: Aggregate, seed=None, settings: StemSettings | None = None,
                return_maps: bool = False, table: HaadfTable | None = None,
                rotation: np.ndarray | None = None):
    """A virtual HAADF-STEM image of ``aggregate``.

    Parameters
    ----------
    aggregate : Aggregate
        Particles [nm].
    seed : int, Generator or None
        Seeds every random step (orientation, phases, scan and shot noise).
    settings : StemSettings, optional
        Image size [px], pixel size [nm], dose [e/Å²], scan noise [nm], β [mrad], noise on/off.
    return_maps : bool
        Also return the noise-free per-material maps and thickness maps (a :class:`RenderResult`).
    table : HaadfTable, optional
        HAADF reference table (default: the shipped one).
    rotation : (3, 3) array, optional
        Use this orientation instead of a random one.

    Returns
    -------
    ndarray or RenderResult
        The (H, W) float32 image [detector counts]; with ``return_maps`` a :class:`RenderResult`.
    """
    aggregate = _check_aggregate(aggregate)
    settings = settings or StemSettings()
    if not isinstance(settings, StemSettings):
        raise TypeError(f"settings must be a StemSettings, got {type(settings).__name__}")
    table = table or load_reference_table()
    rng = as_generator(seed)
    curves, slopes, offsets, counts, names = _table_arrays(table)

    rot = random_rotation(rng) if rotation is None else np.asarray(rotation, dtype=np.float64)
    pos = aggregate.positions @ rot.T
    radii = aggregate.radii
    labels = aggregate.labels
    curve = offsets[labels] + (rng.random(labels.size) * counts[labels]).astype(np.int64)

    px = settings.pixel_size_nm
    size = settings.image_size_px
    lo_x, hi_x = np.min(pos[:, 0] - radii), np.max(pos[:, 0] + radii)
    lo_y, hi_y = np.min(pos[:, 1] - radii), np.max(pos[:, 1] + radii)
    centre = np.array([(lo_x + hi_x) / 2, (lo_y + hi_y) / 2])
    cx = (pos[:, 0] - centre[0]) / px + size / 2
    cy = (pos[:, 1] - centre[1]) / px + size / 2
    r_px = radii / px
    in_field = bool(np.all(cx - r_px >= 0) and np.all(cx + r_px <= size)
                    and np.all(cy - r_px >= 0) and np.all(cy + r_px <= size))
    tan_beta = math.tan(settings.semiangle_mrad * 1e-3)
    sigma_nm = np.abs(pos[:, 2]) * tan_beta if settings.blur else np.zeros(labels.size)

    if return_maps:                      # one map per material, and thickness maps
        maps = np.zeros((len(MATERIALS), size, size))
        thickness = np.zeros_like(maps)
        channel = labels
    else:                                # everything into one map: nothing else is needed
        maps = np.zeros((1, size, size))
        thickness = np.zeros((1, 1, 1))
        channel = np.zeros_like(labels)
    t_max = render_particles(cx, cy, r_px, sigma_nm / px, curve, channel, curves, slopes,
                             table.step_nm, px, settings.supersample, maps, thickness, return_maps)
    if t_max > table.thickness_nm[-1]:
        table.warn_if_beyond(t_max)
    if settings.detector_efficiency != 1.0:
        maps *= settings.detector_efficiency
    electrons = settings.electrons_per_pixel
    signal = maps[0] if maps.shape[0] == 1 else maps.sum(axis=0)      # HAADF fraction per pixel
    if settings.noise:
        shifts = rng.normal(0.0, settings.scan_noise_nm / px, size) if settings.scan_noise_nm > 0 \
            else np.zeros(size)
        image = np.zeros((size, size), dtype=np.float32)
        noisy_counts(signal, electrons, shifts, int(rng.integers(0, 2**31 - 1)), image)
    else:
        image = (signal * electrons).astype(np.float32)

    if not return_maps:
        return image
    return RenderResult(
        image=image, expected=(signal * electrons).astype(np.float32),
        material_maps={MATERIAL_NAMES[k]: (maps[k] * electrons).astype(np.float32) for k in range(len(MATERIALS))},
        thickness_maps={MATERIAL_NAMES[k]: thickness[k].astype(np.float32) for k in range(len(MATERIALS))},
        rotation=rot, curve_names=[names[k] for k in curve], sigma_nm=sigma_nm,
        centre_px=np.stack([cx, cy], axis=1), in_field=in_field, settings=settings)



def _render_into(item, settings, table, shm_name, shape):
    """Worker: render one image straight into the shared output array (no pickling of images)."""
    from multiprocessing import shared_memory

    k, aggregate, seed = item
    shm = shared_memory.SharedMemory(name=shm_name)
    try:
        out = np.ndarray(shape, dtype=np.float32, buffer=shm.buf)
        out[k] = render_stem(aggregate, seed=seed, settings=settings, table=table)
    finally:
        shm.close()
    return k


def _render_item(item, settings, table):
    _, aggregate, seed = item
    return render_stem(aggregate, seed=seed, settings=settings, table=table)


def render_stem_many(aggregates, seed=None, settings: StemSettings | None = None,
                     table: HaadfTable | None = None, workers: int | None = None,
                     show_progress_bars: bool | None = None) -> np.ndarray:
    """Images of many aggregates, (n, H, W) float32 [counts], in processes.

    Image k uses the k-th child of ``SeedSequence(seed)``: the result does not depend on
    ``workers``. Worker processes write into shared memory, so images are never pickled.
    """
    from multiprocessing import shared_memory

    from agglib.core.parallel import resolve_workers

    aggregates = list(aggregates)
    settings = settings or StemSettings()
    seeds = spawn_seeds(seed, len(aggregates))
    shape = (len(aggregates), settings.image_size_px, settings.image_size_px)
    items = [(k, a, s) for k, (a, s) in enumerate(zip(aggregates, seeds))]
    if min(resolve_workers(workers), len(items)) <= 1:
        images = ordered_map(partial(_render_item, settings=settings, table=table), items, workers=1,
                             desc="STEM images", show_progress_bars=show_progress_bars)
        return np.stack(images) if images else np.empty(shape, dtype=np.float32)
    shm = shared_memory.SharedMemory(create=True, size=max(1, int(np.prod(shape)) * 4))
    try:
        func = partial(_render_into, settings=settings, table=table, shm_name=shm.name, shape=shape)
        ordered_map(func, items, workers=workers, desc="STEM images", show_progress_bars=show_progress_bars)
        return np.ndarray(shape, dtype=np.float32, buffer=shm.buf).copy()
    finally:
        shm.close()
        shm.unlink()
