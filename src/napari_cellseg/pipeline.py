"""The whole-cell pipeline: preprocess -> UNet -> seeds -> cells, with caches.

:func:`predict` runs preprocessing and the UNet once and returns a :class:`Prediction`;
``Prediction.segment(h=..., sensitivity=...)`` re-runs only what follows from the cached
maps. Everything expensive that does not depend on h or sensitivity (the LoG response,
its Otsu levels, the basin graph of the cell landscape) is computed once; each seed
mask's shape-watershed hierarchy is built once per sensitivity level.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property

import numpy as np

from .core import cells as cells_mod
from .core import seeds as seeds_mod
from .core.preprocess import REFERENCE_PIXEL_SIZE, rescale, restore_shape, scale_factor, tophat

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentParams:
    """Parameters of the seeds and cells stages, in the units a biologist sets.

    The defaults are the settings measured best on the dense T-cell validation strips with
    three different models (README, "Figures"): seeds from the seed probability's maxima
    and cells where the cell probability exceeds 0.4. The paper's own rules are one switch
    away: ``seed_split="shape"`` (LoG, multi-level Otsu, distance watershed with h in µm)
    and ``background="otsu3"``.
    """

    sensitivity: float = seeds_mod.DEFAULT_SENSITIVITY  # 0-100
    seed_split: str = "probability"  # "probability" (default) or "shape" (the paper's)
    h: float = seeds_mod.DEFAULT_H_UM  # µm, shape split
    h_probability: float = seeds_mod.DEFAULT_H_PROBABILITY  # 0-1, probability split
    seed_diameter: tuple[float, float] | None = None  # µm; None: from the cell diameter
    cell_diameter: float | None = None  # µm; None: the model's
    min_cell_area: float | None = None  # µm²; None: a fifth of the expected cell area
    intensity_weight: float = 0.0  # 0: cell probability alone; 1: the paper's product
    min_intensity: float = 0.05  # drop cells dimmer than this (mean, 0-1 percentile-normalised)
    background: str = "probability"  # "probability" (p_cell > cell_threshold) or "otsu3" (the paper's)
    cell_threshold: float = 0.4  # for background="probability"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Prediction:
    """UNet output for one image, with the caches that make re-segmentation instant.

    All maps live on the *model grid* (the image rescaled to the model's pixel size);
    properties ending in ``_input`` and :meth:`segment` map results back to the input.
    """

    image: np.ndarray  # input image (M, N)
    probabilities: np.ndarray  # (3, m, n) on the model grid: seed, cytoplasm, background
    grid_image: np.ndarray  # preprocessed image on the model grid
    grid_pixel_size: float  # µm per pixel on the model grid
    cell_diameter_um: float = 7.5
    defaults: SegmentParams = field(default_factory=SegmentParams)
    _splitters: dict = field(default_factory=dict, repr=False)
    _basins: dict = field(default_factory=dict, repr=False)

    # ---- maps ----------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int]:
        return self.image.shape

    @property
    def seed_probability(self) -> np.ndarray:
        return self.probabilities[0]

    @property
    def cytoplasm_probability(self) -> np.ndarray:
        return self.probabilities[1]

    @property
    def background_probability(self) -> np.ndarray:
        return self.probabilities[2]

    @property
    def cell_probability(self) -> np.ndarray:
        return self.probabilities[0] + self.probabilities[1]

    def to_input(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        """A model-grid map back on the input grid (order 0 for labels)."""
        return restore_shape(array, self.input_shape, order=order)

    # ---- parameters ----------------------------------------------------------
    def params(self, **overrides) -> SegmentParams:
        """The defaults with ``overrides``; unknown names are an error."""
        unknown = set(overrides) - set(SegmentParams.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown segmentation parameter(s) {sorted(unknown)}; "
                            f"known: {sorted(SegmentParams.__dataclass_fields__)}")
        return replace(self.defaults, **{k: v for k, v in overrides.items() if v is not None})

    def _diameter(self, p: SegmentParams) -> float:
        return float(p.cell_diameter or self.cell_diameter_um)

    def _seed_diameter(self, p: SegmentParams) -> tuple[float, float]:
        if p.seed_diameter is not None:
            return tuple(float(d) for d in p.seed_diameter)
        d = self._diameter(p)
        return (0.25 * d, 0.65 * d)

    def cell_area_px(self, p: SegmentParams) -> float:
        return float(np.pi * (self._diameter(p) / 2.0 / self.grid_pixel_size) ** 2)

    def min_area_px(self, p: SegmentParams) -> int:
        if p.min_cell_area is not None:
            return round(p.min_cell_area / self.grid_pixel_size**2)
        return round(0.2 * self.cell_area_px(p))

    # ---- seeds -----------------------------------------------------------------
    def log_response(self, seed_diameter: tuple[float, float]) -> np.ndarray:
        key = ("log", tuple(seed_diameter))
        if key not in self._splitters:
            px = tuple(d / self.grid_pixel_size for d in seed_diameter)
            response = seeds_mod.log_enhance(self.seed_probability, seeds_mod.seed_scales(px))
            self._splitters[key] = (response, seeds_mod.otsu_levels(response))
        return self._splitters[key][0]

    def seed_thresholds(self, seed_diameter: tuple[float, float]) -> np.ndarray:
        self.log_response(seed_diameter)
        return self._splitters[("log", tuple(seed_diameter))][1]

    @cached_property
    def smoothed_seed_probability(self) -> np.ndarray:
        return seeds_mod.smooth_seed_probability(self.seed_probability, self.grid_pixel_size)

    def seed_enhancement(self, p: SegmentParams) -> tuple[str, np.ndarray]:
        """(name, map) of what the seeds are picked from, on the model grid: the smoothed
        seed probability, or the LoG response for the paper's shape split."""
        if _split(p) == "probability":
            return "smoothed seed probability", self.smoothed_seed_probability
        return "LoG response", self.log_response(self._seed_diameter(p))

    def seed_mask(self, p: SegmentParams) -> np.ndarray:
        if _split(p) == "probability":
            return self.smoothed_seed_probability > seeds_mod.sensitivity_floor(p.sensitivity)
        sd = self._seed_diameter(p)
        return seeds_mod.seed_mask(self.log_response(sd), self.seed_thresholds(sd), p.sensitivity)

    def _splitter(self, p: SegmentParams) -> seeds_mod.SeedSplitter:
        if _split(p) == "probability":
            if "probability" not in self._splitters:
                self._splitters["probability"] = seeds_mod.probability_splitter(self.smoothed_seed_probability)
            return self._splitters["probability"]
        sd = self._seed_diameter(p)
        level = seeds_mod.sensitivity_level(p.sensitivity)
        key = ("split", sd, level)
        if key not in self._splitters:
            self._splitters[key] = seeds_mod.SeedSplitter(self.seed_mask(p))
        return self._splitters[key]

    def seeds(self, p: SegmentParams | None = None) -> np.ndarray:
        """Seed labels on the model grid."""
        p = p or self.defaults
        if _split(p) == "probability":
            if not 0 <= p.h_probability <= 1:
                raise ValueError(f"h_probability must be in [0, 1], got {p.h_probability}")
            return self._splitter(p).cut(p.h_probability, seeds_mod.sensitivity_floor(p.sensitivity), core=True)
        if p.h < 0:
            raise ValueError(f"h must be >= 0 µm, got {p.h}")
        return self._splitter(p).cut(p.h / self.grid_pixel_size)

    # ---- cells -----------------------------------------------------------------
    def landscape(self, p: SegmentParams) -> np.ndarray:
        return self._basin_graph(p).landscape

    def _basin_graph(self, p: SegmentParams) -> cells_mod.BasinGraph:
        key = float(p.intensity_weight)
        if key not in self._basins:
            land = cells_mod.cell_landscape(self.cell_probability, self.grid_image, key)
            self._basins[key] = cells_mod.BasinGraph(land)
            self._basins[(key, "otsu")] = cells_mod.background_thresholds(land)
        return self._basins[key]

    def foreground(self, p: SegmentParams, n_seeds: int) -> np.ndarray:
        return self._foreground(p, n_seeds)[0]

    def _foreground(self, p: SegmentParams, n_seeds: int) -> tuple[np.ndarray, np.ndarray]:
        """The foreground mask and its count per basin, cached per rule and threshold (the
        3-level Otsu rule only ever picks one of two thresholds)."""
        graph = self._basin_graph(p)
        iw = float(p.intensity_weight)
        if p.background == "probability":
            if not 0 < p.cell_threshold < 1:
                raise ValueError(f"cell_threshold must be in (0, 1), got {p.cell_threshold}")
            t = float(p.cell_threshold)
        elif p.background == "otsu3":
            t = cells_mod.choose_background_threshold(
                self._basins[(iw, "otsu")], self._area_above(iw), n_seeds, self.cell_area_px(p))
        else:
            raise ValueError(f"background must be 'otsu3' or 'probability', got {p.background!r}")
        key = (iw, "fg", p.background, t)
        if key not in self._basins:
            values = self.cell_probability if p.background == "probability" else graph.landscape
            mask = values > t
            self._basins[key] = (mask, graph.foreground_counts(mask))
        return self._basins[key]

    def _area_above(self, iw: float) -> np.ndarray:
        key = (iw, "areas")
        if key not in self._basins:
            land = self._basins[iw].landscape
            self._basins[key] = np.array([np.count_nonzero(land > t) for t in self._basins[(iw, "otsu")]])
        return self._basins[key]

    @cached_property
    def normalized_image(self) -> np.ndarray:
        """The grid image with its 1st and 99.8th percentiles mapped to 0 and 1."""
        from .core.preprocess import percentile_normalize

        return percentile_normalize(self.grid_image)

    def segment_grid(self, p: SegmentParams | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(cells, seeds) on the model grid."""
        p = p or self.defaults
        seeds = self.seeds(p)
        n = int(seeds.max())
        fg, counts = self._foreground(p, n)
        cells = self._basin_graph(p).segment(
            seeds, fg, self.min_area_px(p), fg_counts=counts,
            normalized_image=self.normalized_image if p.min_intensity > 0 else None,
            min_intensity=p.min_intensity)
        return cells, seeds

    def segment(self, **params) -> np.ndarray:
        """Cell labels (M, N) int32 on the input grid for the given parameters (see
        :class:`SegmentParams`: ``h`` in µm, ``sensitivity`` 0-100, ...)."""
        cells, _ = self.segment_grid(self.params(**params))
        return self.to_input(cells, order=0)

    def warm(self, p: SegmentParams | None = None) -> None:
        """Build every per-sensitivity hierarchy now (e.g. in a worker after prediction),
        so that later slider moves never wait."""
        p = p or self.defaults
        self._basin_graph(p)
        self._splitter(replace(p, seed_split="probability"))
        if _split(p) == "shape":
            for s in np.linspace(100, 0, seeds_mod.N_THRESHOLDS):
                self._splitter(replace(p, sensitivity=float(s)))

    def stages(self, **params) -> dict[str, np.ndarray]:
        """Every intermediate on the input grid, for the viewer's layers."""
        p = self.params(**params)
        cells, seeds = self.segment_grid(p)
        enhancement_name, enhancement = self.seed_enhancement(p)
        return {
            "preprocessed": self.to_input(self.grid_image),
            "seed probability": self.to_input(self.seed_probability),
            "cytoplasm probability": self.to_input(self.cytoplasm_probability),
            "background probability": self.to_input(self.background_probability),
            enhancement_name: self.to_input(enhancement),
            "seed mask": self.to_input(self.seed_mask(p).astype(np.uint8), order=0),
            "seeds": self.to_input(seeds, order=0),
            "cells": self.to_input(cells, order=0),
        }


def _split(p: SegmentParams) -> str:
    if p.seed_split not in seeds_mod.SPLIT_METHODS:
        raise ValueError(f"seed_split must be one of {seeds_mod.SPLIT_METHODS}, got {p.seed_split!r}")
    return p.seed_split


def preprocess(
    image: np.ndarray,
    pixel_size: float | None,
    model_pixel_size: float | None,
    tophat_um: float | None = None,
) -> tuple[np.ndarray, float]:
    """Rescale to the model's pixel size and optionally remove the background.

    Returns the image on the model grid and that grid's pixel size (µm).
    """
    image = _check_image(image)
    factor = scale_factor(pixel_size, model_pixel_size)
    grid = rescale(image, factor) if factor != 1.0 else image
    grid_px = model_pixel_size or pixel_size or REFERENCE_PIXEL_SIZE
    if pixel_size and not model_pixel_size:
        grid_px = pixel_size
    if tophat_um:
        grid = tophat(grid, tophat_um / grid_px)
    return grid.astype(np.float32), float(grid_px)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        raise ValueError(f"RGB image of shape {image.shape}: pick the channel with the signal "
                         "first (napari_cellseg.io.select_channel)")
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}; segment a stack "
                         "plane by plane")
    if min(image.shape) < 8:
        raise ValueError(f"image of shape {image.shape} is too small (at least 8 x 8 px)")
    if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise ValueError(f"unsupported pixel type {image.dtype}")
    if not np.all(np.isfinite(image)):
        raise ValueError("image contains NaN or infinite values; replace them first "
                         "(e.g. numpy.nan_to_num)")
    return image


def iter_predict(
    image: np.ndarray,
    pixel_size: float | None = None,
    model=None,
    device: str = "auto",
    tophat_um: float | None = None,
    tile: int = 512,
    batch_size: int | None = None,
    flips: bool = False,
) -> Generator[tuple[int, int], None, Prediction]:
    """:func:`predict` as a generator: yields (tiles done, tiles total), returns the
    :class:`Prediction`. A worker that stops iterating cancels the prediction."""
    from .model.inference import iter_probabilities
    from .model.store import load_model
    from .model.unet import UNet

    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], UNet):
        net, info = model
    else:
        net, info = load_model(model, device="cpu")
    grid, grid_px = preprocess(image, pixel_size, info.pixel_size, tophat_um)
    if np.ptp(grid) == 0:
        # A constant image holds no cell; normalising it would only amplify nothing.
        probs = np.zeros((3, *grid.shape), np.float32)
        probs[2] = 1.0
        yield 1, 1
    else:
        probs = yield from iter_probabilities(net, grid, device=device, tile=tile,
                                              batch_size=batch_size, normalize=info.normalize,
                                              flips=flips)
    defaults = SegmentParams(**{k: v for k, v in info.extra.get("segment_defaults", {}).items()
                                if k in SegmentParams.__dataclass_fields__})
    return Prediction(np.asarray(image), probs, grid, grid_px, info.cell_diameter_um, defaults)


def drain(gen: Generator, progress: Callable | None = None) -> object:
    """Run a progress generator to its end and return its value, passing each yielded
    step to ``progress`` when given."""
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress:
            progress(*step)


def predict(
    image: np.ndarray,
    pixel_size: float | None = None,
    model=None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    **kwargs,
) -> Prediction:
    """Preprocess and run the UNet once.

    Parameters
    ----------
    image : (M, N) ndarray
        One channel, any numeric dtype.
    pixel_size : float, optional
        µm per pixel; when given (and the model knows its own), the image is rescaled to
        the model's pixel size and results are mapped back.
    model : str, path or (UNet, ModelInfo), optional
        A shipped or saved model name, a weight file, or a loaded model. Default: the
        shipped model.
    device : str
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"mps"``.
    progress : callable, optional
        ``progress(tiles_done, tiles_total)``.

    Returns
    -------
    Prediction
    """
    return drain(iter_predict(image, pixel_size, model, device, **kwargs), progress)


def segment(image: np.ndarray, pixel_size: float | None = None, model=None, device: str = "auto",
            **params) -> np.ndarray:
    """:func:`predict` then :meth:`Prediction.segment`: cell labels (M, N) int32."""
    return predict(image, pixel_size, model, device).segment(**params)


def validation_scores(model, info, examples, params: SegmentParams | None = None) -> dict[str, float]:
    """AP at IoU 0.5 after seeds and watershed on normalised validation examples (used
    while training to pick the best epoch)."""
    from .core.metrics import evaluate
    from .model.inference import predict_probabilities

    if params is None:  # the model's tuned defaults when it has them, else the paper's
        saved = info.extra.get("segment_defaults", {})
        params = SegmentParams(**{k: v for k, v in saved.items() if k in SegmentParams.__dataclass_fields__})
    aps = []
    for e in examples:
        probs = predict_probabilities(model, e.image, normalize=None, device=next(model.parameters()).device)
        pred = Prediction(e.image, probs, e.image, info.pixel_size or 1.0, info.cell_diameter_um, params)
        cells, _ = pred.segment_grid()
        aps.append(evaluate(e.labels, cells).ap)
    return {"val_mAP": float(np.mean(aps)), "score": float(np.mean(aps))}


def iter_predict_planes(
    stack: np.ndarray, pixel_size: float | None = None, model=None, device: str = "auto", **kwargs
) -> Generator[tuple[int, int], None, list[Prediction]]:
    """Predict every plane of a (P, M, N) stack (time or z), one after the other.

    Yields progress as (done, total) in hundredths of a plane after each batch of tiles;
    returns the Predictions. The model is loaded once.
    """
    from .model.store import load_model
    from .model.unet import UNet

    stack = np.asarray(stack)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"expected a 2-D image or a (planes, M, N) stack, got shape {stack.shape}")
    if not (isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], UNet)):
        model = load_model(model, device="cpu")
    out = []
    total = 100 * len(stack)
    for i, plane in enumerate(stack):
        gen = iter_predict(plane, pixel_size, model, device, **kwargs)
        while True:
            try:
                done, tiles = next(gen)
            except StopIteration as stop:
                out.append(stop.value)
                break
            yield int(100 * i + 100 * done / tiles), total
    return out
