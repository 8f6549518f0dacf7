"""Segment a list of files, writing what the CLI writes: <stem>_masks.tif,
<stem>_cells.csv and <stem>_params.json. Used by the CLI and the Batch widget."""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence
from pathlib import Path

from . import __version__
from .io import check_can_write_all, read_image, read_pixel_size, result_paths, write_results
from .progress import Progress

logger = logging.getLogger(__name__)


def output_paths(path: Path, out: Path) -> dict[str, Path]:
    """The files written for the image ``path`` in the folder ``out``."""
    return result_paths(out, Path(path).stem)


def iter_segment_files(
    paths: Sequence[str | Path],
    out: str | Path,
    method: str = "unet",
    params: dict | None = None,
    pixel_size: float | None = None,
    model=None,
    device: str = "auto",
    channel: int | None = None,
    overwrite: bool = False,
    cell_diameter_px: float | None = None,
) -> Generator[Progress, None, list[tuple[Path, int]]]:
    """Segment each file; yield ``Progress(files done, total, "files")``; return
    [(path, number of cells)].

    Every output path is checked before any work starts, so a refused overwrite never
    leaves a half-written batch. ``params`` go to :func:`segment_classic` for
    ``method="classic"`` and to :meth:`Prediction.segment` for ``"unet"``; the model is
    loaded once.

    With neither ``pixel_size`` nor ``cell_diameter_px``, each image's pixel size is the
    one its file's metadata states (:func:`~napari_cellseg.io.read_pixel_size`), where it
    states one; all are read, and non-square pixels refused, before any work. The classic
    method works in pixels: its pixel size only turns the cell table's areas into µm².
    """
    out = Path(out)
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no images to segment")
    if method not in ("unet", "classic"):
        raise ValueError(f"method must be 'unet' or 'classic', got {method!r}")
    stems = [p.stem for p in paths]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ValueError(f"several inputs share the name(s) {dupes}; their outputs would collide")
    check_can_write_all([t for p in paths for t in output_paths(p, out).values()], overwrite)
    # A size the user gave (a number, "auto") or a cell diameter wins over the file's.
    from_file = {p: read_pixel_size(p) if pixel_size is None and cell_diameter_px is None else None
                 for p in paths}
    out.mkdir(parents=True, exist_ok=True)
    params = dict(params or {})
    net, model_info = None, None
    if method == "unet":
        from .model.store import resolve_model

        net = resolve_model(model)  # loaded once for the whole batch
        from .model.store import model_record

        model_info = model_record(model)
    results = []
    for i, path in enumerate(paths):
        image = read_image(path, channel)
        if image.ndim != 2:
            raise ValueError(f"{path}: a stack of shape {image.shape}; segment 2-D images "
                             "(or split the stack into planes first)")
        file_size = from_file[path]
        if file_size is not None:
            logger.info("%s: pixel size %g µm from the file's metadata", path.name, file_size)
        image_size = pixel_size if file_size is None else file_size
        if method == "classic":
            from .core.classic import segment_classic

            labels = segment_classic(image, **params)
            used, size = dict(params), image_size
        else:
            from .pipeline import predict

            try:
                prediction = predict(image, image_size, net, device, cell_diameter_px=cell_diameter_px)
            except ValueError as err:
                if file_size is None:
                    raise
                raise ValueError(f"{path}: with the pixel size {file_size:g} µm its file's metadata "
                                 f"states: {err} (give --pixel-size to use another)") from err
            used = prediction.params(params).to_dict()  # every value, the model's defaults applied
            labels = prediction.segment(**used)
            # The pixel size given, read from the file, estimated ("auto") or derived from the
            # cell diameter; with none, the image is taken to be at the model's, unscaled, so
            # the grid's pixel size is the image's.
            size = prediction.pixel_size or prediction.grid.pixel_size
        record = {"image": str(path), "method": method, "parameters": used,
                  "pixel_size_um": size,
                  "pixel_size_given": pixel_size is not None and pixel_size != "auto",
                  "model": model_info, "version": __version__}
        if file_size is not None:
            record["pixel_size_from"] = "file metadata"
        elif method == "unet" and (prediction.scale is not None or cell_diameter_px is not None):
            record["pixel_size_from"] = ("estimated from the image" if prediction.scale is not None
                                         else f"cell diameter {cell_diameter_px} px")
        write_results(out, path.stem, labels, image, size, record, overwrite=overwrite)
        results.append((path, int(labels.max())))
        yield Progress(i + 1, len(paths), "files")
    return results
