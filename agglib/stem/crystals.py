"""Crystal structures of the four phases in the HAADF reference table.

Each :class:`PhaseSpec` holds the numbers needed to build the unit cell with ase, with the
publication every number comes from (the paper's refs. [37–40]). Only
:func:`build_crystal` needs ase (the ``agglib[multislice]`` extra); the specs themselves are
plain data so the renderer can list phases without ase installed.

Thermal vibrations enter the frozen-phonon simulation as an isotropic RMS displacement
``u_rms = sqrt(B / 8π²)`` per element.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math

__all__ = ["PhaseSpec", "PHASES", "build_crystal", "rms_displacement_from_b"]


def rms_displacement_from_b(b_iso: float) -> float:
    """RMS displacement along one axis [Å] from an isotropic Debye–Waller factor B [Å²]."""
    return math.sqrt(b_iso / (8.0 * math.pi ** 2))


@dataclass(frozen=True)
class PhaseSpec:
    """A crystal phase: what ase needs to build it, and where the numbers come from.

    Parameters
    ----------
    name : str
        Identifier used in the reference table (e.g. ``"TiO2-rutile"``).
    material : str
        ``"TiO2"`` or ``"WO3"``: which particles of an aggregate may use this phase.
    spacegroup : int
        International Tables number.
    cellpar : tuple of float
        a, b, c [Å], α, β, γ [degree].
    basis_symbols, basis : tuple
        Asymmetric-unit atoms and fractional coordinates (Wyckoff positions; ase applies the
        space-group operations).
    b_iso : dict
        Isotropic Debye–Waller factor B [Å²] per element.
    setting : int
        Space-group origin choice passed to ``ase.spacegroup.crystal``.
    source : str
        Bibliographic source of the numbers above.
    """

    name: str
    material: str
    spacegroup: int
    cellpar: tuple
    basis_symbols: tuple
    basis: tuple
    b_iso: dict = field(default_factory=dict)
    setting: int = 1
    source: str = ""

    @property
    def sigmas(self) -> dict:
        """RMS thermal displacement per element [Å] for frozen phonons."""
        return {el: rms_displacement_from_b(b) for el, b in self.b_iso.items()}


# Debye–Waller factors. The structure papers below report room-temperature isotropic B close
# to these values; we use one B per element and phase, rounded:
#   TiO2: B(Ti) = 0.42 Å², B(O) = 0.48 Å²  (u_rms 0.073 / 0.078 Å; rutile and anatase at 295 K,
#         Sugiyama & Takéuchi 1991 [40]; Horn & Schwerdtfeger 1972 [38]).
#   WO3:  B(W) = 0.30 Å², B(O) = 0.79 Å²   (u_rms 0.062 / 0.100 Å; room-temperature neutron
#         refinement of γ-WO3, Loopstra & Rietveld 1969 [39]; used for δ-WO3 too).
# These are inputs to the frozen-phonon model; change them per phase when regenerating.
_B_TIO2 = {"Ti": 0.42, "O": 0.48}
_B_WO3 = {"W": 0.30, "O": 0.79}


def _reo3_supercell_basis() -> tuple[tuple, tuple]:
    """Idealised 2×2×2 ReO3-type WO3 cell: 8 W at (¼ + i/2, ¼ + j/2, ¼ + k/2), O between.

    Both γ- and δ-WO3 are small distortions (W off-centring and octahedral tilts of at most
    ~0.3 Å) of this arrangement; the lattice constants and angles of each phase are applied
    exactly, the atomic shifts are not (see ``PHASES`` and the book's STEM chapter).
    """
    symbols, coords = [], []
    for i in range(2):
        for j in range(2):
            for k in range(2):
                w = (0.25 + 0.5 * i, 0.25 + 0.5 * j, 0.25 + 0.5 * k)
                symbols.append("W")
                coords.append(w)
                for axis in range(3):
                    o = list(w)
                    o[axis] = (o[axis] + 0.25) % 1.0
                    symbols.append("O")
                    coords.append(tuple(o))
    return tuple(symbols), tuple(coords)


_WO3_SYMBOLS, _WO3_BASIS = _reo3_supercell_basis()

PHASES: dict[str, PhaseSpec] = {
    "TiO2-rutile": PhaseSpec(
        name="TiO2-rutile", material="TiO2", spacegroup=136,          # P4_2/mnm
        cellpar=(4.594, 4.594, 2.959, 90.0, 90.0, 90.0),
        basis_symbols=("Ti", "O"), basis=((0.0, 0.0, 0.0), (0.3048, 0.3048, 0.0)),  # 2a, 4f
        b_iso=_B_TIO2,
        source="Sugiyama & Takéuchi, Z. Kristallogr. 194, 305 (1991), 25 °C data [paper ref. 40]",
    ),
    "TiO2-anatase": PhaseSpec(
        name="TiO2-anatase", material="TiO2", spacegroup=141,         # I4_1/amd, origin 1
        cellpar=(3.785, 3.785, 9.514, 90.0, 90.0, 90.0),
        basis_symbols=("Ti", "O"), basis=((0.0, 0.0, 0.0), (0.0, 0.0, 0.2081)),     # 4a, 8e
        b_iso=_B_TIO2, setting=1,
        source="Horn & Schwerdtfeger, Z. Kristallogr. 136, 273 (1972), room temperature "
               "[paper ref. 38]",
    ),
    "WO3-gamma": PhaseSpec(
        name="WO3-gamma", material="WO3", spacegroup=1,               # true group P2_1/n
        cellpar=(7.306, 7.540, 7.692, 90.0, 90.88, 90.0),
        basis_symbols=_WO3_SYMBOLS, basis=_WO3_BASIS,
        b_iso=_B_WO3,
        source="lattice: Loopstra & Rietveld, Acta Cryst. B25, 1420 (1969) [paper ref. 39]; "
               "atoms: idealised ReO3-type positions (W off-centring and octahedral tilts, "
               "≤ 0.3 Å, not applied)",
    ),
    "WO3-delta": PhaseSpec(
        name="WO3-delta", material="WO3", spacegroup=1,               # true group P-1
        cellpar=(7.309, 7.522, 7.678, 88.81, 90.92, 90.93),
        basis_symbols=_WO3_SYMBOLS, basis=_WO3_BASIS,
        b_iso=_B_WO3,
        source="lattice: Diehl, Brandt & Salje, Acta Cryst. B34, 1105 (1978) [paper ref. 37]; "
               "atoms: idealised ReO3-type positions (as for WO3-gamma)",
    ),
}


def build_crystal(phase: str | PhaseSpec):
    """The unit cell of ``phase`` as an ``ase.Atoms`` (needs the ``multislice`` extra).

    Parameters
    ----------
    phase : str or PhaseSpec
        A key of :data:`PHASES` or a spec of your own.
    """
    from ase.spacegroup import crystal

    if isinstance(phase, str) and phase not in PHASES:
        raise ValueError(f"phase={phase!r} is unknown; accepted: {sorted(PHASES)}")
    spec = PHASES[phase] if isinstance(phase, str) else phase
    return crystal(list(spec.basis_symbols), basis=list(spec.basis), spacegroup=spec.spacegroup,
                   cellpar=list(spec.cellpar), setting=spec.setting, primitive_cell=False)
