"""Run-size profiles (``tiny``, ``quick``, ``paper``), defined as data in ``profiles.yaml``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import yaml

from agglib import config
from agglib.core.validation import check_range

_PROFILES_FILE = Path(__file__).with_name("profiles.yaml")


@dataclass(frozen=True)
class Profile:
    """How large each computation is.

    Attributes
    ----------
    name : str
    description : str
    batch_size : int
        ν, images (aggregates) per batch of one configuration (paper: 12).
    fig4_aggregates : int
        Aggregates drawn over the grid for the Df/ρ densities (paper's Fig. 4: 19,440).
    fig5_batches : int
        Batches per θ specification for the cluster-size figure (Fig. 5).
    fov_aggregates : int
        Grid aggregates drawn to measure the share inside the STEM field of view (notebook 02).
    """

    name: str
    description: str
    batch_size: int
    fig4_aggregates: int
    fig5_batches: int
    fov_aggregates: int

    def __post_init__(self):
        for f in fields(self):
            if f.type == "int":
                check_range(f"{self.name}.{f.name}", getattr(self, f.name), low=1, integer=True)

    def to_dict(self) -> dict:
        return asdict(self)


def available_profiles() -> list[str]:
    return list(yaml.safe_load(_PROFILES_FILE.read_text()))


def load_profile(name: str | None = None, **overrides) -> Profile:
    """The profile ``name`` (default ``config['profile']``) with fields overridden.

    Raises
    ------
    ValueError
        For an unknown profile or field, naming the accepted ones.
    """
    name = name or config.get("profile")
    table = yaml.safe_load(_PROFILES_FILE.read_text())
    if name not in table:
        raise ValueError(f"profile={name!r} is unknown; accepted: {sorted(table)}")
    known = {f.name for f in fields(Profile)} - {"name"}
    bad = set(overrides) - known
    if bad:
        raise ValueError(f"unknown profile fields {sorted(bad)}; accepted: {sorted(known)}")
    return replace(Profile(name=name, **table[name]), **overrides)
