"""Segmentation parameters in the units a biologist sets, and their conversion to the
pixels of the grid the maps live on (the only place where µm become pixels)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

DEFAULT_SENSITIVITY = 60.0
DEFAULT_H_UM = 3.0
DEFAULT_H_PROBABILITY = 0.15
DEFAULT_CELL_DIAMETER_UM = 7.5
SPLIT_METHODS = ("probability", "shape")
BACKGROUND_RULES = ("probability", "otsu3")


@dataclass(frozen=True)
class SegmentParams:
    """Parameters of the seeds and cells stages, in the units a biologist sets.

    The defaults are the settings measured best on the dense T-cell validation strips with
    three different models (README, "Figures"): seeds from the seed probability's maxima
    and cells where the cell probability exceeds 0.4. The paper's own rules are one switch
    away: ``seed_split="shape"`` (LoG, multi-level Otsu, distance watershed with h in µm)
    and ``background="otsu3"``.
    """

    sensitivity: float = DEFAULT_SENSITIVITY  # 0-100
    seed_split: str = "probability"  # "probability" (default) or "shape" (the paper's)
    h: float = DEFAULT_H_UM  # µm, shape split
    h_probability: float = DEFAULT_H_PROBABILITY  # 0-1, probability split
    seed_diameter: tuple[float, float] | None = None  # µm; None: from the cell diameter
    cell_diameter: float | None = None  # µm; None: the model's
    min_cell_area: float | None = None  # µm²; None: a fifth of the expected cell area
    intensity_weight: float = 0.0  # 0: cell probability alone; 1: the paper's product
    min_intensity: float = 0.05  # drop cells dimmer than this (mean, 0-1 percentile-normalised)
    background: str = "probability"  # "probability" (p_cell > cell_threshold) or "otsu3" (the paper's)
    cell_threshold: float = 0.4  # for background="probability"

    def __post_init__(self) -> None:
        _check_choice("seed_split", self.seed_split, SPLIT_METHODS)
        _check_choice("background", self.background, BACKGROUND_RULES)
        _check_range("sensitivity", self.sensitivity, 0, 100)
        _check_range("h", self.h, 0, np.inf, unit=" µm")
        _check_range("h_probability", self.h_probability, 0, 1)
        _check_range("intensity_weight", self.intensity_weight, 0, np.inf)
        _check_range("min_intensity", self.min_intensity, 0, 1)
        _check_range("cell_threshold", self.cell_threshold, 0, 1)
        if not 0 < float(self.cell_threshold) < 1:
            raise ValueError(f"cell_threshold must be in (0, 1), got {self.cell_threshold}")
        if self.cell_diameter is not None:  # text or True was a numpy TypeError, or 1 µm
            try:
                ok = not isinstance(self.cell_diameter, bool | str | bytes) and 0 < float(self.cell_diameter) < np.inf
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"cell_diameter must be a finite number of µm > 0, got {self.cell_diameter!r}")
        if self.min_cell_area is not None:
            _check_range("min_cell_area", self.min_cell_area, 0, np.inf, unit=" µm²")
        if self.seed_diameter is not None:
            try:  # one number (5) or text was "'int' object is not iterable"
                if isinstance(self.seed_diameter, str | bytes):
                    raise TypeError
                sd = tuple(float(d) for d in self.seed_diameter if not isinstance(d, bool | str | bytes))
            except (TypeError, ValueError):
                sd = ()
            if len(sd) != 2 or not all(np.isfinite(d) and d > 0 for d in sd):
                raise ValueError(f"seed_diameter must be two finite diameters > 0 µm (smallest, "
                                 f"largest), got {self.seed_diameter}")
            object.__setattr__(self, "seed_diameter", sd)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping | None) -> SegmentParams:
        """Parameters from a mapping (a model's saved defaults, a layer's metadata),
        ignoring names that are not parameters (saved by another version)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(values or {}).items() if k in known})

    def updated(self, **overrides) -> SegmentParams:
        """These parameters with ``overrides`` (None keeps a value); an unknown name is
        an error that lists the known ones."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown segmentation parameter(s) {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_range(name: str, value, lo: float, hi: float, unit: str = "") -> None:
    """A finite number in [lo, hi] (hi = inf: no upper bound, but still finite), not a bool
    or text: h = inf would merge every seed of the image into one cell."""
    try:
        ok = (not isinstance(value, bool | str | bytes) and bool(lo <= float(value) <= hi)
              and bool(np.isfinite(float(value))))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        span = f"a finite number >= {lo}" if hi == np.inf else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {span}{unit}, got {value!r}")


@dataclass(frozen=True)
class Grid:
    """The grid the maps live on: its pixel size and the model's typical cell diameter,
    both in µm. Every µm -> pixel conversion of the stages is a method here."""

    pixel_size: float  # µm per pixel
    cell_diameter: float = DEFAULT_CELL_DIAMETER_UM  # µm, the model's typical cell

    def __post_init__(self) -> None:
        for name in ("pixel_size", "cell_diameter"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number of µm > 0, got {v}")

    def px(self, um: float) -> float:
        """A length in µm as pixels of this grid."""
        return float(um) / self.pixel_size

    def diameter(self, p: SegmentParams) -> float:
        """The typical cell diameter (µm): the parameter's, else the model's."""
        return float(p.cell_diameter or self.cell_diameter)

    def seed_diameter_px(self, p: SegmentParams) -> tuple[float, float]:
        """Smallest and largest seed diameter in pixels (the LoG scales of the shape
        split): the parameter's, else a quarter to two thirds of the cell diameter."""
        if p.seed_diameter is not None:
            return tuple(self.px(d) for d in p.seed_diameter)
        d = self.diameter(p)
        return (self.px(0.25 * d), self.px(0.65 * d))

    def cell_area_px(self, p: SegmentParams) -> float:
        """Area of a disc of the typical cell diameter, in pixels."""
        return float(np.pi * (self.px(self.diameter(p)) / 2.0) ** 2)

    def min_area_px(self, p: SegmentParams) -> int:
        """Smallest cell kept, in pixels: ``min_cell_area`` µm², else a fifth of the
        typical cell."""
        if p.min_cell_area is not None:
            return round(p.min_cell_area / self.pixel_size**2)
        return round(0.2 * self.cell_area_px(p))

    def h_px(self, p: SegmentParams) -> float:
        """The shape split's h in pixels."""
        return self.px(p.h)
