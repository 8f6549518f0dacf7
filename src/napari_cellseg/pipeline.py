"""The whole-cell pipeline: preprocess -> UNet -> seeds -> cells.

:func:`iter_predict` (drained by :func:`predict`) runs preprocessing and the UNet once and
returns a :class:`Prediction`: the probability maps, a :class:`~.core.seeds.SeedStage` and
a :class:`~.core.cells.CellStage`. Each stage owns its method choice and its caches, so
``Prediction.segment(h=..., sensitivity=...)`` re-runs only what follows from the cached
maps; ``warm`` builds those caches ahead, in the worker that predicted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .core import validate
from .core.cells import CellStage
from .core.labels import relabel
from .core.params import Grid, SegmentParams
from .core.preprocess import REFERENCE_PIXEL_SIZE, rescale, restore_shape, scale_factor, tophat
from .core.seeds import SeedStage
from .progress import Progress, drain

logger = logging.getLogger(__name__)

__all__ = ["Prediction", "SegmentParams", "iter_predict", "iter_predict_planes", "measure_scale", "predict",
           "segment"]

# Below this mean confidence (the probability of each pixel's most likely class) the
# network is unsure about most of the image. Measured 2026-11-23 on 256 px noise and on
# real and synthetic cell images (the sample crops, the 7 dense strips, four synthetic
# looks at 0.5x, 1x, 2x): Gaussian or uniform noise 0.47-0.49 with dense_tcells and
# 0.57-0.60 with dense_tcells_multiscale, cell images 0.80-0.995 with either. Noise
# with blobs of a cell's size (smoothed, or sparse counts) reads 0.50-0.78: not always
# flagged.
LOW_CONFIDENCE = 0.65

# Stage names of Prediction.stages(), in pipeline order.
STAGES = ("preprocessed", "seed_probability", "cytoplasm_probability", "background_probability",
          "seed_enhancement", "seed_mask", "seeds", "cells")


def foreground_probability(probabilities: np.ndarray, cell: np.ndarray | None = None) -> np.ndarray:
    """Seed + cytoplasm (+ touch, for a 4-class model) probability: the pixels that may
    belong to a cell. ``cell``: the seed + cytoplasm sum when the caller has it already;
    for a 3-class model it is returned as it is (no copy)."""
    cell = probabilities[0] + probabilities[1] if cell is None else cell
    return cell + probabilities[3] if len(probabilities) > 3 else cell


@dataclass
class Prediction:
    """UNet output for one image, with the stages that make re-segmentation instant.

    All maps live on the *model grid* (the image rescaled to the model's pixel size);
    :meth:`segment`, :meth:`seeds_input` and :meth:`to_input` map results back to the
    input grid.
    """

    image: np.ndarray  # input image (M, N)
    probabilities: np.ndarray  # (3 or 4, m, n) on the model grid: seed, cytoplasm, background[, touch]
    grid_image: np.ndarray  # preprocessed image on the model grid
    grid: Grid  # the model grid's pixel size and the model's typical cell diameter (µm)
    defaults: SegmentParams = field(default_factory=SegmentParams)
    pixel_size: float | None = None  # µm per input pixel used (None: taken as the model's)
    scale: object | None = None  # the ScaleEstimate when the pixel size was estimated ("auto")
    # The model's name (a shipped or saved name, or its file; None for a model passed in
    # memory), and the ModelChoice when none was named (choose.py).
    model_name: str | None = None
    model_choice: object | None = None
    # What the user must hear about this image, as logged (a scale not estimated, a
    # network unsure of the image): the widgets show it, a batch records it.
    warnings: list[str] = field(default_factory=list)

    # ---- maps ----------------------------------------------------------------
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

    @property
    def touch_probability(self) -> np.ndarray | None:
        """A 4-class model's touch probability (where two cells touch), else None."""
        return self.probabilities[3] if len(self.probabilities) > 3 else None

    @property
    def foreground_probability(self) -> np.ndarray:
        """What the cell threshold applies to: the cell probability, plus the touch
        probability of a 4-class model (its touching lines belong to cells)."""
        return foreground_probability(self.probabilities)

    @cached_property
    def confidence(self) -> float:
        """Mean over pixels of the most likely class's probability (1/3 to 1): low when
        the image holds no cells or cells unlike the model's (see :data:`LOW_CONFIDENCE`)."""
        return float(self.probabilities.max(axis=0).mean()) if self.probabilities.size else 1.0

    def to_input(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        """A model-grid map back on the input grid (order 0 for labels)."""
        return restore_shape(array, self.image.shape, order=order)

    def labels_to_input(self, labels: np.ndarray) -> np.ndarray:
        """Labels on the model grid back on the input grid, numbered 1..K again: a cell
        narrower than a pixel of the input can vanish in the nearest-neighbour shrink, and
        its id would leave a gap (so that the largest id overstated the count)."""
        out = self.to_input(labels, order=0)
        if out is not labels and out.size:
            out = relabel(out).astype(labels.dtype, copy=False)
        return out

    # ---- stages --------------------------------------------------------------
    @cached_property
    def seed_stage(self) -> SeedStage:
        return SeedStage(self.seed_probability, self.grid)

    @cached_property
    def cell_stage(self) -> CellStage:
        cell = self.cell_probability
        return CellStage(cell, self.grid_image, self.grid,
                         foreground_probability=foreground_probability(self.probabilities, cell))

    def params(self, params: SegmentParams | Mapping | None = None, **overrides) -> SegmentParams:
        """The defaults, updated by ``params`` (a SegmentParams or a mapping) and
        ``overrides``; None keeps a default, an unknown name is an error."""
        if isinstance(params, SegmentParams):
            return params.updated(**overrides)
        return self.defaults.updated(**{**dict(params or {}), **overrides})

    def is_warm(self, params: SegmentParams | Mapping | None = None) -> bool:
        """True when segmenting with ``params`` builds nothing (milliseconds)."""
        p = self.params(params)
        return self.seed_stage.is_warm(p) and self.cell_stage.is_warm(p)

    def warm(self, params: SegmentParams | Mapping | None = None) -> None:
        """Build what ``params`` need at every h and sensitivity (in a worker after
        prediction), so that later slider moves never wait."""
        p = self.params(params)
        self.cell_stage.warm(p)
        self.seed_stage.warm(p)

    def seeds(self, params: SegmentParams | Mapping | None = None) -> np.ndarray:
        """Seed labels on the model grid."""
        return self.seed_stage.seeds(self.params(params))

    def seeds_input(self, **params) -> np.ndarray:
        """Seed labels (M, N) int32 on the input grid."""
        return self.labels_to_input(self.seeds(params))

    def seed_enhancement(self, params: SegmentParams | Mapping | None = None) -> tuple[str, np.ndarray]:
        """(kind, map on the model grid) the seeds are picked from (see SeedStage)."""
        return self.seed_stage.enhancement(self.params(params))

    def segment_grid(self, params: SegmentParams | Mapping | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(cells, seeds) on the model grid."""
        p = self.params(params)
        seeds = self.seed_stage.seeds(p)
        return self.cell_stage.segment(seeds, p), seeds

    def segment(self, **params) -> np.ndarray:
        """Cell labels (M, N) int32 on the input grid for the given parameters (see
        :class:`SegmentParams`: ``h`` in µm, ``sensitivity`` 0-100, ...)."""
        cells, _ = self.segment_grid(params)
        return self.labels_to_input(cells)

    def stages(self, **params) -> dict[str, np.ndarray]:
        """Every intermediate on the input grid, keyed by :data:`STAGES`."""
        p = self.params(params)
        cells, seeds = self.segment_grid(p)
        _, enhancement = self.seed_stage.enhancement(p)
        return {
            "preprocessed": self.to_input(self.grid_image),
            "seed_probability": self.to_input(self.seed_probability),
            "cytoplasm_probability": self.to_input(self.cytoplasm_probability),
            "background_probability": self.to_input(self.background_probability),
            "seed_enhancement": self.to_input(enhancement),
            "seed_mask": self.to_input(self.seed_stage.mask(p).astype(np.uint8), order=0),
            "seeds": self.labels_to_input(seeds),
            "cells": self.labels_to_input(cells),
        }


def image_pixel_size(info) -> float | None:
    """The pixel size (µm) of the images a model is meant for when its network works at a
    finer grid (``info.extra["image_pixel_size"]``, e.g. 0.5 for a model trained at 0.25
    µm/px on 0.5 µm/px images upsampled 2x), else None: the model's own pixel size."""
    value = info.extra.get("image_pixel_size")
    return None if value is None else validate.finite_positive(value, "the model's image_pixel_size", "µm")


def preprocess(
    image: np.ndarray,
    pixel_size: float | None,
    model_pixel_size: float | None,
    tophat_um: float | None = None,
) -> tuple[np.ndarray, float]:
    """Rescale to the model's pixel size and optionally remove the background.

    Returns the image on the model grid and that grid's pixel size (µm). Every argument
    is checked first (:mod:`~napari_cellseg.core.validate`): a pixel size that is not a
    finite number > 0, a rescale beyond 8x either way or past the memory available is a
    clear error, before any work.
    """
    image = validate.image_2d(image)
    pixel_size = validate.optional_pixel_size(pixel_size)
    tophat_um = validate.optional_pixel_size(tophat_um, "tophat_um")  # same rule: None/0 = off
    factor = validate.rescale_factor(scale_factor(pixel_size, model_pixel_size), image.shape,
                                     pixel_size, model_pixel_size)
    grid = rescale(image, factor) if factor != 1.0 else image
    grid_px = model_pixel_size or pixel_size or REFERENCE_PIXEL_SIZE
    if tophat_um:
        grid = tophat(grid, tophat_um / grid_px)
    return grid.astype(np.float32), float(grid_px)


def iter_predict(
    image: np.ndarray,
    pixel_size: float | str | None = "auto",
    model=None,
    device: str = "auto",
    *,
    tophat_um: float | None = None,
    tile: int = 512,
    batch_size: int | None = None,
    flips: bool = False,
    warm: SegmentParams | Mapping | None = None,
    cell_diameter_px: float | None = None,
    cell_diameter_um: float | None = None,
) -> Generator[Progress, None, Prediction]:
    """:func:`predict` as a generator: yields :class:`Progress` (tiles), returns the
    :class:`Prediction`. A worker that stops iterating cancels the prediction. With
    ``warm`` (parameters), the stages those parameters need are built before returning,
    in the caller's thread."""
    from .choose import is_auto
    from .model.inference import iter_probabilities
    from .model.registry import DEFAULT_MODEL
    from .model.store import resolve_model

    choosing = is_auto(model)
    net, info = resolve_model(DEFAULT_MODEL if choosing else model)
    image_px = image_pixel_size(info)  # checked before any estimate
    scale = None
    if isinstance(pixel_size, str) and pixel_size not in ("auto", "model"):
        raise ValueError(f"pixel_size must be a number of µm, 'auto', 'model' or None, got {pixel_size!r}")
    if isinstance(pixel_size, str) and pixel_size == "model":  # (an array == "model" is no bool)
        pixel_size = None
    elif not isinstance(pixel_size, str):
        # Checked before any work (True, NaN, -1 or "0.5 µm" as a number would otherwise
        # fail only after the network pass); 0 means unknown, as None does.
        pixel_size = validate.optional_pixel_size(pixel_size)
    if cell_diameter_um is not None:
        # A diameter in µm (cells of another size than the model's, in a calibrated image)
        # becomes pixels through the image's pixel size; the zoom then comes from the
        # diameter, as with cell_diameter_px, and the pixel size only measured it.
        if cell_diameter_px is not None:
            raise ValueError("give the cell diameter in µm or in px, not both")
        if pixel_size is None or isinstance(pixel_size, str):
            raise ValueError("a cell diameter in µm needs the image's pixel size (pixel_size, a number "
                             "of µm) to know how many pixels it spans; or give it in pixels "
                             "(cell_diameter_px)")
        cell_diameter_px = (validate.finite_positive(cell_diameter_um, "cell_diameter_um", "µm")
                            / validate.finite_positive(pixel_size, "pixel_size", "µm"))
        pixel_size = None
    if cell_diameter_px is not None:
        # A diameter replaces the estimate (the default), not a pixel size the caller gave.
        if pixel_size is not None and pixel_size != "auto":
            raise ValueError("give the pixel size or the cell diameter, not both")
        # The pixel size at which cells this many pixels across have the model's diameter.
        pixel_size = info.cell_diameter_um / validate.finite_positive(cell_diameter_px, "cell_diameter_px", "px")
        factor = scale_factor(pixel_size, info.pixel_size)
        if not 1 / validate.MAX_RESCALE <= factor <= validate.MAX_RESCALE:  # named for the diameter
            raise ValueError(f"a cell diameter of {cell_diameter_px:.4g} px means rescaling the image by "
                             f"{factor:.3g} to match the model's {info.cell_diameter_um:.3g} µm cells, outside "
                             f"[1/{validate.MAX_RESCALE:g}, {validate.MAX_RESCALE:g}]: check the diameter "
                             "(and its unit), or use a model trained on cells nearer that size")
    estimated = isinstance(pixel_size, str) and pixel_size == "auto"
    warned: list[str] = []
    net, info, pixel_size, scale, choice = yield from _iter_read(image, net, info, pixel_size, estimated,
                                                                 choosing, device, tophat_um, warned)
    # A model that runs its network at a finer grid than the images it is meant for (a 2x
    # model: image_pixel_size in its metadata) takes an image without a pixel size to be at
    # that size, and segments on that grid, not on the network's.
    net_px = pixel_size if pixel_size is not None else image_px
    try:
        grid_image, grid_px = preprocess(image, net_px, info.pixel_size, tophat_um)
    except MemoryError as err:
        if scale is None:
            raise
        # The estimate asked for more than this machine has (a large image whose cells read
        # as tiny, enlarged up to 5.7x): the model's scale instead, said, rather than no answer.
        warned.append(f"automatic scale: {err}; the image is taken to be at the model's pixel size "
                      "instead: give the pixel size or the cell diameter")
        logger.warning("%s", warned[-1])
        scale = pixel_size = None
        net_px = image_px
        grid_image, grid_px = preprocess(image, net_px, info.pixel_size, tophat_um)
    seg_grid = None
    if image_px is not None:
        # The grid a 2x model segments on, made (and its zoom checked) before the network
        # pass: a pixel size or diameter that grid refuses failed only after it.
        seg_grid = preprocess(image, net_px, image_px, tophat_um)
    if np.ptp(grid_image) == 0:
        # A constant image holds no cell; normalising it would only amplify nothing.
        probs = np.zeros((net.config.n_classes, *grid_image.shape), np.float32)
        probs[2] = 1.0
        yield Progress(1, 1, "tiles")
    else:
        probs = yield from iter_probabilities(net, grid_image, device=device, tile=tile,
                                              batch_size=batch_size, normalize=info.normalize,
                                              flips=flips)
    if seg_grid is not None:
        # Cross-validated (README, x2_scratch): the maps of a 2x network segmented at 1x
        # score as well as at 2x (0.643 against 0.639 over 5 folds), 4-5x faster.
        grid_image, grid_px = seg_grid
        probs = np.stack([restore_shape(p, grid_image.shape) for p in probs])
    defaults = SegmentParams.from_mapping(info.extra.get("segment_defaults"))
    prediction = Prediction(np.asarray(image), probs, grid_image, Grid(grid_px, info.cell_diameter_um),
                            defaults, validate.optional_pixel_size(pixel_size), scale,
                            choice.name if choice is not None else _model_name(model), choice, warned)
    if prediction.confidence < LOW_CONFIDENCE:
        warned.append(
            f"the network is unsure about most of this image (confidence {prediction.confidence:.3f}, "
            f"below {LOW_CONFIDENCE:.2f}): it may hold no cells (noise), or cells unlike the model's "
            "training images; check the pixel size, or fine-tune the model on a few corrected cells")
        logger.warning("%s", warned[-1])
    if warm is not None:
        yield Progress(1, 1, "tiles", message="preparing the live sliders")
        prediction.warm(warm)
    return prediction


def _iter_read(image, net, info, pixel_size, estimated: bool, choosing: bool, device: str,
               tophat_um: float | None, warned: list[str] | None = None):
    """What the image itself says, before its network pass: the scale (``estimated``:
    ``pixel_size="auto"``) and the model (``choosing``), as a generator yielding
    :class:`Progress`; returns (net, info, pixel_size, ScaleEstimate or None, ModelChoice or
    None). ``pixel_size``: the one asked for (a number, or None: the model's); ``warned``
    gets the warnings given."""
    from .choose import choose_model
    from .model.registry import DEFAULT_MODEL
    from .model.store import resolve_model

    image_px = image_pixel_size(info)
    scale = None
    memo: dict = {}  # the trial crops' network passes on this image (scale.trial_predictions)
    warned = [] if warned is None else warned
    mark = len(warned)
    if estimated:
        yield Progress(0, 1, "tiles", message="estimating the scale")
        pixel_size, scale = _estimate(image, net, info, device, memo=memo, warned=warned)
    choice = None
    if choosing:
        yield Progress(0, 1, "tiles", message="choosing the model")
        plane = validate.image_2d(image)
        at_px = pixel_size if pixel_size is not None else image_px
        # The zoom checked (bounds, memory) before the crops' network passes, as preprocess does.
        try:
            zoom = validate.rescale_factor(scale_factor(at_px, info.pixel_size), plane.shape, at_px,
                                           info.pixel_size)
        except MemoryError:
            if scale is None:
                raise
            zoom = scale_factor(image_px, info.pixel_size)  # preprocess falls back to it, below
        tophat_um = validate.optional_pixel_size(tophat_um, "tophat_um")
        choice = choose_model(plane, zoom, device, tophat_um / info.pixel_size if tophat_um else None, memo)
        logger.info("model: %s (mean confidence on the cells: %s)", choice.name,
                    ", ".join(f"{k} {v:.3f}" for k, v in choice.scores.items()))
        if choice.name != DEFAULT_MODEL:
            net, info = resolve_model(choice.name)
            if estimated:  # the chosen model's own estimate: each model draws its cells its way
                # On the default's best rung only, refined by the sizes of the chosen model's
                # cells there: on each of the 38 nuclear images tried (29 real, 9 synthetic)
                # the chosen model's best rung over the whole ladder was the default's, so the
                # estimate is the same, for a third of the network passes of that rung and its
                # neighbours (2.3 s against 7.1 s for the whole ladder over the 38;
                # 2026-11-24, /tmp scratch).
                # The rung the default took (never one it passed over as noise).
                best = None if scale is None else (scale.rung / scale.base_zoom,)
                # Its failure is only logged: the default's reading, or its failure, stands and
                # was said; its success replaces the default's failure, said no more.
                own_px, own_scale = _estimate(image, net, info, device, zooms=best, memo=memo,
                                              instead="the default model's reading is kept")
                if own_scale is not None:  # else the default's reading stands
                    pixel_size, scale = own_px, own_scale
                    del warned[mark:]
    for text in warned[mark:]:  # what still holds
        logger.warning("%s", text)
    return net, info, pixel_size, scale, choice


def measure_scale(image: np.ndarray, model=None, device: str = "auto", *,
                  tophat_um: float | None = None) -> tuple[float | None, object, str | None, object]:
    """What ``pixel_size="auto"`` reads from ``image`` (one 2-D channel) before its network
    pass, without that pass: (the pixel size, µm, or None where there was nothing to
    measure; the :class:`~napari_cellseg.scale.ScaleEstimate` or None; the model's name;
    the :class:`~napari_cellseg.choose.ModelChoice`, None when a model is named). The
    model is chosen as :func:`predict` chooses it (``model`` None or ``"auto"``), and the
    estimate is the chosen model's. A batch of one experiment's images reads a few and
    takes one scale for all (``batch.iter_segment_files``, ``same_scale``)."""
    from .choose import is_auto
    from .model.registry import DEFAULT_MODEL
    from .model.store import resolve_model

    choosing = is_auto(model)
    net, info = resolve_model(DEFAULT_MODEL if choosing else model)
    _, _, px, scale, choice = drain(_iter_read(image, net, info, "auto", True, choosing, device, tophat_um))
    name = choice.name if choice is not None else _model_name(model)
    return px, scale, name, choice


def _estimate(image: np.ndarray, net, info, device: str, zooms: tuple[float, ...] | None = None,
              memo: dict | None = None, instead: str | None = None, warned: list[str] | None = None):
    """``pixel_size="auto"``: (the pixel size to use, the ScaleEstimate), or (None, None)
    with a warning when there is nothing to measure. ``zooms``: the rungs to try (default:
    the whole ladder, ``scale.ZOOMS``); ``memo``: the network passes already run on this
    image (``scale.trial_predictions``); ``instead``: what the warning says happens then
    (default: the image is taken at the model's pixel size); ``warned``: a list the warning
    is added to instead of the log (the caller logs it)."""
    from .scale import estimate_scale

    plane = validate.image_2d(image)  # a stack or an empty array is refused here, in words
    try:
        scale = estimate_scale(plane, net, info, device, **({"zooms": zooms} if zooms else {}), memo=memo)
    except ValueError as err:
        # An empty, constant or tiny image: nothing to measure, and nothing lost by
        # taking it at the model's scale (it then gets its cells, or none, in words).
        text = f"automatic scale: {err}; " + (instead or (
            f"the image is taken to be at the model's pixel size "
            f"({image_pixel_size(info) or info.pixel_size or 0.0:g} µm)"))
        if warned is None:
            logger.warning("%s", text)
        else:  # the caller logs it once settled (a second model's estimate may replace it)
            warned.append(text)
        return None, None
    logger.info("automatic scale: %.3g µm per pixel (cells about %.1f px across; network "
                "confidence %.2f)%s", scale.pixel_size, scale.cell_diameter_px, scale.confidence,
                f"; measured {scale.measured_pixel_size:.3g} µm, within a factor √2 of the "
                "model's: the image is used at the model's scale" if scale.kept_model_scale else "")
    return scale.pixel_size, scale


def _model_name(model) -> str | None:
    """A named model's name or file (None for a loaded pair)."""
    if isinstance(model, tuple):
        return None
    from .model.registry import available_models

    if isinstance(model, str) and model in available_models():
        return model
    return str(model)


def predict(
    image: np.ndarray,
    pixel_size: float | str | None = "auto",
    model=None,
    device: str = "auto",
    progress: Callable[[Progress], None] | None = None,
    **kwargs,
) -> Prediction:
    """Preprocess and run the UNet once.

    Parameters
    ----------
    image : (M, N) ndarray
        One channel, any numeric dtype.
    pixel_size : float, "auto", "model" or None
        µm per pixel; when given (and the model knows its own), the image is rescaled to
        the model's pixel size and results are mapped back. ``"auto"`` (the default: an
        array carries no pixel size) estimates it from the image
        (:func:`napari_cellseg.scale.estimate_scale`: a few small trial passes; an image
        whose cells look within a factor √2 of the model's size is left as it is, and one
        with nothing to measure, e.g. constant, is taken at the model's scale with a
        warning). ``"model"`` or None take the image to be at the model's pixel size.
    model : str, path or (UNet, ModelInfo), optional
        A shipped or saved model name, a weight file, or a loaded model. Default (None or
        ``"auto"``): the shipped default model, or the shipped nuclear model where the
        network is surer of the image's cells with it (:mod:`napari_cellseg.choose`);
        ``Prediction.model_name`` says which.
    device : str
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"mps"``.
    progress : callable, optional
        Called with each :class:`~napari_cellseg.progress.Progress` (tiles done).
    **kwargs
        ``tophat_um``, ``tile``, ``batch_size``, ``flips``, ``warm`` (see :func:`iter_predict`),
        ``cell_diameter_px`` (the cells' typical diameter in pixels, instead of a pixel size),
        ``cell_diameter_um`` (the diameter in µm, with ``pixel_size`` the image's: cells of
        another size than the model's are zoomed to its size, the returned ``pixel_size``
        being the one that zoom implies).

    Returns
    -------
    Prediction
    """
    return drain(iter_predict(image, pixel_size, model, device, **kwargs), progress)


def segment(image: np.ndarray, pixel_size: float | str | None = "auto", model=None, device: str = "auto",
            **params) -> np.ndarray:
    """:func:`predict` then :meth:`Prediction.segment`: cell labels (M, N) int32."""
    return predict(image, pixel_size, model, device).segment(**params)


def iter_predict_planes(
    stack: np.ndarray, pixel_size: float | str | None = "auto", model=None, device: str = "auto", **kwargs
) -> Generator[Progress, None, list[Prediction]]:
    """Predict every plane of a (P, M, N) stack (time or z), one after the other; a 2-D
    image is a stack of one.

    Yields :class:`Progress` in percent of the whole stack; returns the Predictions. The
    model is loaded once. With none named (``choose.py``) it is chosen once per stack, and
    with ``"auto"`` the scale is estimated once: by the first plane that measures both
    (else each by the first plane that measured it), every plane then running with them;
    each plane's ``model_choice`` is the choice that set the stack's model. ``kwargs`` go to
    :func:`iter_predict` (``warm`` included).
    """
    from .model.store import resolve_model

    stack = np.asarray(stack)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"expected a 2-D image or a (planes, M, N) stack, got shape {stack.shape}")
    from .choose import is_auto
    from .model.registry import DEFAULT_MODEL

    choosing = is_auto(model)
    if not choosing:
        resolve_model(model)  # a missing or corrupt model fails before any plane (loaded once: cached)
    out: list[Prediction | None] = [None] * len(stack)
    n = len(out)
    estimating = isinstance(pixel_size, str) and pixel_size == "auto" and kwargs.get("cell_diameter_px") is None
    # The scale and the model are settled once per stack, by the first plane that measured
    # every one still open (a blank or out-of-focus plane measures nothing); the planes
    # predicted before it are predicted again with what it settled.
    unmeasured: list[int] = []
    order = list(range(n))
    decided = None  # the ModelChoice that settled the model

    def settle(px, choice) -> None:
        """Fix the values still open (the pixel size ``px``, the model of ``choice``, None:
        the default) and queue the planes that ran with other ones."""
        nonlocal pixel_size, model, estimating, choosing, decided
        redo_px, redo_model = estimating, choosing
        if estimating:
            pixel_size, estimating = px, False
        if choosing:
            decided, model, choosing = choice, choice.name if choice is not None else DEFAULT_MODEL, False
        wanted_px = None if pixel_size == "model" else pixel_size
        order.extend(j for j in unmeasured if (redo_px and out[j].pixel_size != wanted_px)
                     or (redo_model and out[j].model_name != model))

    k, last_call = 0, False
    while True:
        if k == len(order):
            if not (estimating or choosing) or last_call:
                break
            # Nothing measured both on one plane (every plane is unmeasured): each value is
            # the first measured on any plane (else the model's scale, the default model),
            # and every plane that ran with other values runs again: the stack is one answer.
            last_call = True
            settle(next((p.pixel_size for p in out if p.pixel_size is not None), "model") if estimating else None,
                   next((p.model_choice for p in out if p.model_choice.measured), None) if choosing else None)
            continue
        i = order[k]
        gen = iter_predict(stack[i], pixel_size, model, device, **kwargs)
        while True:
            try:
                step = next(gen)
            except StopIteration as stop:
                before, out[i] = out[i], stop.value
                plane = out[i]
                if before is not None and plane.pixel_size is None and plane.scale is None:
                    # Run again at the model's scale (nothing measured it on any plane):
                    # why its own estimate failed still holds, and is still said.
                    plane.warnings[:0] = [w for w in before.warnings
                                          if w.startswith("automatic scale:") and w not in plane.warnings]
                if estimating or choosing:
                    if ((not estimating or plane.pixel_size is not None)
                            and (not choosing or plane.model_choice.measured)):
                        # Only the planes that ran with other values (a blank plane at the
                        # model's scale, or with the default model) run again.
                        settle(plane.pixel_size, plane.model_choice)
                    else:
                        unmeasured.append(i)
                break
            done, total = step.done, step.total
            text = step.message or f"{done} / {total} tiles"
            yield Progress(int(100 * k + 100 * done / total), 100 * len(order), "%",
                           message=f"plane {i + 1} of {n}: {text}" if n > 1 else text)
        k += 1
    if decided is not None:  # every plane records the choice that set its model
        for plane in out:
            plane.model_choice = decided
    return out
