"""Segment a list of files, writing what the CLI writes: <stem>_masks.tif,
<stem>_cells.csv and <stem>_params.json. Used by the CLI and the Batch widget.

In this process one file after another, or one task per file on dask.distributed
(``workers=`` for a ``LocalCluster``, ``scheduler=`` for a cluster, ``client=``).

Each frame's three files are written to a staging folder and moved into place with
``os.replace`` (atomic), its ``_params.json`` first, holding the *request* (image, its
size and date, method, parameters, pixel size, model, version), the labels and table
after it, each old output removed first. So a frame is done exactly when its params
file holds this request and both other files exist; a frame whose params hold this
request but whose files are missing was stopped mid-write and is redone; a task run
twice (a worker killed after writing) writes the same files again. ``resume=True``
skips the done frames.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import __version__
from .io import (
    _check_file,
    _jsonable,
    check_can_write_all,
    read_image,
    read_pixel_size,
    result_paths,
    write_results,
)
from .progress import Progress

logger = logging.getLogger(__name__)

STAGING = ".napari-cellseg-staging"


def output_paths(path: Path, out: Path) -> dict[str, Path]:
    """The files written for the image ``path`` in the folder ``out``."""
    return result_paths(out, Path(path).stem)


def recorded_warnings(paths, out: str | Path) -> dict[Path, list[str]]:
    """The warnings each image's record holds (``warnings`` in its params JSON: a scale
    not estimated, a network unsure of the image), for the images of ``paths`` that have
    any: what a batch run says at its end, since its workers' logs are not shown."""
    found = {}
    for path in paths:
        try:
            record = _record(out, Path(path))
        except (OSError, ValueError):
            continue
        if record.get("warnings"):
            found[Path(path)] = list(record["warnings"])
    return found


@dataclass(frozen=True)
class _Job:
    """What every frame shares (pickled once per task on the engine)."""

    out: str
    method: str
    params: dict
    pixel_size: Any  # µm, "auto" or None
    model: Any  # None, a name or path (resolved where the task runs), or a loaded pair
    model_info: dict | None
    device: str
    channel: int | None
    cell_diameter_px: float | None
    threads: dict | None = None  # engine: torch threads per worker
    cell_diameter_um: float | None = None  # µm; each image's pixel size turns it into px
    same_scale: bool = False  # one scale for the images that would each be estimated
    # What same_scale settled (_batch_scale): {"pixel_size": µm, "model": the chosen name or
    # None, "measured_on": file names, "estimates_um" / "measured_um": each one's estimate,
    # applied / as measured}; None: each image's own
    batch_scale: dict | None = None


def _request(job: _Job, path: Path) -> dict:
    """What a frame's outputs are made from; equal requests give equal outputs."""
    st = path.stat()
    return {"image": str(path.resolve()), "image_bytes": st.st_size, "image_mtime_ns": st.st_mtime_ns,
            "method": job.method, "params": job.params, "pixel_size": job.pixel_size,
            "cell_diameter_px": job.cell_diameter_px, "channel": job.channel,
            "model": job.model_info, "version": __version__,
            # only when set, so that outputs written before it existed still resume
            **({"cell_diameter_um": job.cell_diameter_um} if job.cell_diameter_um is not None else {}),
            **({"same_scale": True} if job.same_scale else {})}


def _state(job: _Job, path: Path) -> str:
    """"done", "ours" (this request, stopped before its files were all in place),
    "foreign" (outputs from something else) or "none"."""
    files = output_paths(path, Path(job.out))
    if not any(f.exists() for f in files.values()):
        return "none"
    try:
        record = json.loads(files["params"].read_text())
        ours = record.get("request") == json.loads(json.dumps(_request(job, path), default=_jsonable))
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        return "foreign"
    return "done" if files["labels"].exists() and files["table"].exists() else "ours"


def _record(out: str | Path, path: Path) -> dict:
    """The params record written for ``path`` in the folder ``out``."""
    return json.loads(output_paths(path, Path(out))["params"].read_text())


def _cells_written(job: _Job, path: Path) -> int:
    return int(_record(job.out, path)["cells"])


def _read_plane(job: _Job, path: Path):
    """The 2-D image (its channel) of ``path``; a stack is refused in words."""
    image = read_image(path, job.channel)
    if image.ndim != 2:
        raise ValueError(f"{path}: a stack of shape {image.shape}; segment 2-D images "
                         "(or split the stack into planes first)")
    return image


SAME_SCALE_SAMPLE = 8  # images read for a batch's one scale (same_scale), spread over the list


def _iter_batch_scale(job: _Job, paths: list[Path]) -> Generator[Progress, None, dict | None]:
    """Read the scale (and, with no model named, the model) of up to ``SAME_SCALE_SAMPLE``
    of ``paths``, spread over the list, and settle one for all: the model most of them
    chose (of equal votes, the default), and the median of that model's estimates
    (``scale.combine``). None (each image then estimated on its own, as without
    ``same_scale``) when there are no such images, or none shows cells to measure."""
    import numpy as np

    from .choose import is_auto
    from .model.registry import DEFAULT_MODEL
    from .pipeline import measure_scale
    from .scale import combine

    if not paths:
        return None
    picks = list(dict.fromkeys(paths[round(i)] for i in np.linspace(0, len(paths) - 1,
                                                                     min(SAME_SCALE_SAMPLE, len(paths)))))
    readings = []
    for k, path in enumerate(picks):
        yield Progress(0, 1, "files", f"one scale for the batch: reading image {k + 1} of {len(picks)}")
        image = _read_plane(job, path)
        try:
            _, scale, name, _ = measure_scale(image, job.model, job.device)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        if scale is not None:
            readings.append((path, scale, name))
    if not readings:
        logger.warning("one scale for the batch: none of the %d images read shows cells to measure; "
                       "each image's scale is estimated on its own", len(picks))
        return None
    names = [name for _, _, name in readings]
    chosen = max(dict.fromkeys(names), key=lambda n: (names.count(n), n == DEFAULT_MODEL))
    readings = [r for r in readings if r[2] == chosen]
    pixel_size, _ = combine([scale for _, scale, _ in readings])
    logger.info("one scale for the batch: %.4g µm per pixel, the median of %d image(s)' estimates "
                "(%s)%s", pixel_size, len(readings), ", ".join(f"{s.pixel_size:.3g}" for _, s, _ in readings),
                f"; model {chosen} (chosen by {len(readings)} of {len(names)})" if is_auto(job.model) else "")
    return {"pixel_size": pixel_size, "model": chosen if is_auto(job.model) else None,
            "measured_on": [p.name for p, _, _ in readings],
            "estimates_um": [round(s.pixel_size, 5) for _, s, _ in readings],
            "measured_um": [round(s.measured_pixel_size, 5) for _, s, _ in readings]}


def _segment_file(job: _Job, path: Path, file_size: float | None) -> int:
    """Segment one file and put its outputs in place (see the module notes); the number
    of cells."""
    image = _read_plane(job, path)
    if file_size is not None:
        logger.info("%s: pixel size %g µm from the file's metadata", path.name, file_size)
    given = job.pixel_size not in (None, "auto", "model")
    # What the µm columns are measured in: a number given, else the file's own pixel size.
    physical = job.pixel_size if given else file_size
    scale_from = None  # the estimate or the cell diameter, when it set the model's zoom
    if job.method == "classic":
        from .core.classic import segment_classic

        labels = segment_classic(image, **job.params)
        used, size = dict(job.params), physical
    else:
        from .choose import is_auto
        from .model.store import resolve_model
        from .pipeline import predict

        # Loaded once per process (resolve_model keeps it); with none named, each image's
        # model is chosen by its look (choose.py) and its record says which.
        net = None if is_auto(job.model) else resolve_model(job.model)
        diameter_px = job.cell_diameter_px
        if job.cell_diameter_um is not None:  # the pixel size (checked up front) measures it
            diameter_px = job.cell_diameter_um / physical
        # The zoom onto the model's grid: "auto", "model" or a cell diameter win over the
        # file's size; with none of them and no size in the file, the scale is estimated.
        zoom_by_file = job.pixel_size is None and diameter_px is None and file_size is not None
        zoom = None if diameter_px is not None else file_size if zoom_by_file else job.pixel_size
        if zoom is None and diameter_px is None:
            zoom = "auto"
        zoom_was_auto = zoom == "auto"
        batch = job.batch_scale if zoom == "auto" else None  # the batch's one scale, for this image's
        if batch is not None:
            zoom = batch["pixel_size"]
            if batch["model"] is not None:
                net = batch["model"]  # by name: the prediction's model_name says what ran
        try:
            prediction = predict(image, zoom, net, job.device, cell_diameter_px=diameter_px)
        except (ValueError, MemoryError) as err:
            if batch is not None:  # the user gave no pixel size: say where the scale came from
                raise type(err)(f"{path}: the batch's one scale ({batch['pixel_size']:.4g} µm per pixel, the "
                                f"median of {len(batch['measured_on'])} images' estimates) cannot be applied "
                                f"to this image: {err}; segment it without same_scale (--same-scale)") from err
            if isinstance(err, MemoryError):
                raise
            if not zoom_by_file:
                raise ValueError(f"{path}: {err}") from err
            raise ValueError(f"{path}: with the pixel size {file_size:g} µm its file's metadata "
                             f"states: {err} (give --pixel-size to use another)") from err
        used = prediction.params(job.params).to_dict()  # every value, the model's defaults applied
        labels = prediction.segment(**used)
        if batch is not None:
            n = len(batch["measured_on"])
            scale_from = ("estimated from the batch: " + (f"the median of {n} images' estimates" if n > 1
                                                          else f"one image's estimate ({batch['measured_on'][0]})"))
        elif prediction.scale is not None:
            scale_from = "estimated from the image"
        elif job.cell_diameter_um is not None:
            scale_from = f"cell diameter {job.cell_diameter_um:g} µm ({diameter_px:.3g} px)"
        elif job.cell_diameter_px is not None:
            scale_from = f"cell diameter {job.cell_diameter_px} px"
        elif zoom in ("auto", "model"):  # asked for, or no estimate was used (its warning says why)
            scale_from = "the model's pixel size" + (" (no estimate used: see 'warnings')" if zoom == "auto" else "")
        # The physical pixel size when known; else the one estimated ("auto") or derived
        # from the cell diameter (cells taken to be the model's size); with none, the image
        # is taken to be at the model's, unscaled, so the grid's pixel size is the image's.
        size = physical or prediction.pixel_size or prediction.grid.pixel_size
    record = {"image": str(path), "method": job.method, "parameters": used,
              "pixel_size_um": size, "pixel_size_given": given,
              "model": job.model_info, "version": __version__, "request": _request(job, path)}
    if job.method == "unet":
        from .model.store import model_record

        if prediction.model_choice is not None or (batch is not None and batch["model"] is not None):
            record["model"] = model_record(prediction.model_name)  # the one chosen for this image, or the batch
        if prediction.model_choice is not None:
            record["model_choice"] = prediction.model_choice.to_dict()
        if job.same_scale and zoom_was_auto:
            # null where the batch had nothing to measure and each image was estimated on its
            # own: a resumed batch then keeps doing so (iter_segment_files)
            record["batch_scale"] = batch
        if prediction.scale is not None and prediction.scale.kept_model_scale:
            record["measured_pixel_size_um"] = prediction.scale.measured_pixel_size  # kept at the model's
        if prediction.warnings:  # what the log said of this image, kept with it (workers' logs are not shown)
            record["warnings"] = list(prediction.warnings)
    if file_size is not None or (given and scale_from is not None):
        # The file's size (read only when no number was given), or the number given with a
        # diameter in µm, measures the µm; the model's zoom came from the cells.
        record["pixel_size_from"] = "file metadata" if file_size is not None else "given"
        if scale_from is not None:
            record["scale_from"] = scale_from
            record["scale_pixel_size_um"] = prediction.pixel_size
    elif scale_from is not None:
        record["pixel_size_from"] = scale_from
    out = Path(job.out)
    stage = out / STAGING / f"{path.stem}.{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    staged = write_results(stage, path.stem, labels, image, size, record)
    final = output_paths(path, out)
    for kind in ("params", "labels", "table"):  # old outputs go first (allowed, checked up front)
        final[kind].unlink(missing_ok=True)
    for kind in ("params", "labels", "table"):  # the request first: see the module notes
        os.replace(staged[kind], final[kind])
    stage.rmdir()
    return int(labels.max())


def _frame_task(job: _Job, path: str, file_size: float | None, model=None) -> int:
    """One frame on a worker (a retried task finds its frame done and only reads the count)."""
    from .workflows.engine import set_threads

    job = job if model is None else replace(job, model=model)
    p = Path(path)
    if _state(job, p) == "done":
        return _cells_written(job, p)
    if job.threads is not None and job.method == "unet":
        set_threads(job.threads)
    return _segment_file(job, p, file_size)


def iter_segment_files(
    paths: Sequence[str | Path],
    out: str | Path,
    method: str = "unet",
    params: dict | None = None,
    pixel_size: float | str | None = None,
    model=None,
    device: str = "auto",
    channel: int | None = None,
    overwrite: bool = False,
    cell_diameter_px: float | None = None,
    resume: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    client=None,
    cell_diameter_um: float | None = None,
    same_scale: bool = False,
) -> Generator[Progress, None, list[tuple[Path, int]]]:
    """Segment each file; yield ``Progress(files done, total, "files")``; return
    [(path, number of cells)] in the order of ``paths``.

    Every output path is checked before any work starts, so a refused overwrite never
    leaves a half-written batch. ``params`` go to :func:`segment_classic` for
    ``method="classic"`` and to :meth:`Prediction.segment` for ``"unet"``; the model is
    loaded once (per worker on the engine).

    Without a ``pixel_size`` number, each image's pixel size is the one its file's
    metadata states (:func:`~napari_cellseg.io.read_pixel_size`), where it states one; all
    are read, and non-square pixels refused, before any work. A file that states none is
    zoomed by the estimate (``"auto"``) with the unet method. ``"auto"``, ``"model"`` (the
    image taken at the model's pixel size) or ``cell_diameter_px`` set only the model's
    zoom (cells rescaled to the model's size), and the file's pixel size still measures
    the µm (``scale_from`` in the record); with no file size, µm use the pixel size they
    imply. ``cell_diameter_um`` is a diameter in µm, turned into pixels per image by the
    ``pixel_size`` number or each file's own (every image must have one: checked before
    any work). The classic method works in pixels: its pixel size only turns the cell
    table's areas into µm².

    ``same_scale=True`` (one experiment's images, taken at one scale): the images that
    would each have their scale estimated share one instead, the median of the estimates
    of up to ``SAME_SCALE_SAMPLE`` of them spread over the list, read before any is
    segmented (and the model, when none is named, the one most of them chose). Their cell
    tables' µm then compare across the batch, and a single image's stray estimate is
    outvoted. Each of their records' ``batch_scale`` says what was measured on which
    images (null where none showed cells to measure: each image was then estimated on its
    own); a resumed batch keeps what its finished images had. The sample is read in this
    process, before any task goes to ``workers`` or a cluster.

    ``resume=True`` skips frames whose outputs were written for this very request (see
    the module notes) and finishes the rest. ``workers`` / ``scheduler`` / ``client`` run
    one task per frame on dask.distributed (a worker lost mid-frame: the frame is redone
    elsewhere, its files written once); otherwise frames run here, one after another.
    On a cluster, image paths and a model path must be readable by the workers.
    """
    out = Path(out)
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no images to segment")
    if method not in ("unet", "classic"):
        raise ValueError(f"method must be 'unet' or 'classic', got {method!r}")
    for p in paths:  # every input exists before any work (read one by one later)
        _check_file(p)
    # Case folded: on macOS and Windows A.tif and a.tif write the same outputs.
    folded = [p.stem.casefold() for p in paths]
    dupes = sorted({p.stem for p in paths if folded.count(p.stem.casefold()) > 1})
    if dupes:
        raise ValueError(f"several inputs share the name(s) {dupes}; their outputs would collide")
    model_info = None
    if method == "unet":
        from .choose import CANDIDATES, auto_record, is_auto
        from .model.store import model_record, resolve_model

        # A missing or corrupt model fails now, before any work.
        for name in CANDIDATES if is_auto(model) else [model]:
            resolve_model(name)
        model_info = auto_record() if is_auto(model) else model_record(model)
    if (cell_diameter_px is not None or cell_diameter_um is not None) and method != "unet":
        raise ValueError("a cell diameter sets the unet method's zoom; the classic method works in pixels")
    if cell_diameter_px is not None and pixel_size not in (None, "auto", "model"):
        raise ValueError("a cell diameter in px goes without a pixel size number (give the diameter in "
                         "µm to use both)")
    if cell_diameter_um is not None:
        from .core import validate

        if cell_diameter_px is not None or pixel_size in ("auto", "model"):
            raise ValueError("a cell diameter in µm goes without a diameter in px, and with a pixel "
                             "size number or the files' own")
        cell_diameter_um = validate.finite_positive(cell_diameter_um, "cell_diameter_um", "µm")
        if pixel_size is not None:
            validate.finite_positive(pixel_size, "pixel_size", "µm")
    if same_scale and (method != "unet" or pixel_size not in (None, "auto") or cell_diameter_px is not None
                       or cell_diameter_um is not None):
        raise ValueError("same_scale estimates one scale for the batch's images: it goes with the unet "
                         "method and pixel_size 'auto' or None (each file's own size, where it states "
                         "one), not with a pixel size number, 'model' or a cell diameter")
    job = _Job(str(out), method, dict(params or {}), pixel_size, model, model_info, device, channel,
               cell_diameter_px, cell_diameter_um=cell_diameter_um, same_scale=bool(same_scale))
    states = {p: _state(job, p) for p in paths}
    done = [p for p in paths if resume and states[p] == "done"]
    todo = [p for p in paths if p not in done]
    # Outputs of this request left by a stopped run are ours to replace; others need overwrite.
    refusable = [p for p in todo if states[p] == "foreign" or (states[p] == "done" and not resume)]
    try:
        check_can_write_all([t for p in refusable for t in output_paths(p, out).values()], overwrite)
    except FileExistsError as err:
        if resume:
            raise FileExistsError(f"{err} (with resume: they were written with other settings or by "
                                  "another version)") from err
        raise
    # A number the user gave wins over the file's pixel size; "auto" or a cell diameter set
    # the model's zoom only, and the file's size, when it states one, still measures the µm.
    from_file = {p: read_pixel_size(p) if pixel_size in (None, "auto", "model") else None
                 for p in todo}
    if cell_diameter_um is not None and pixel_size is None:
        unsized = [p.name for p in todo if from_file[p] is None]
        if unsized:
            raise ValueError(f"a cell diameter in µm needs each image's pixel size, and "
                             f"{', '.join(unsized[:5])}{' …' if len(unsized) > 5 else ''} state(s) none: "
                             "give the pixel size, or the diameter in px")
    if same_scale:
        # A resumed batch keeps the scale its finished images were segmented at (null: each
        # its own, where its sample had nothing to measure).
        settled = next((r["batch_scale"] for r in (_record(job.out, p) for p in done) if "batch_scale" in r), ...)
        if settled is ...:
            estimated = [p for p in paths if pixel_size == "auto"
                         or (from_file[p] if p in from_file else read_pixel_size(p)) is None]
            settled = yield from _iter_batch_scale(job, estimated)
        job = replace(job, batch_scale=settled)
    out.mkdir(parents=True, exist_ok=True)
    counts = {p: _cells_written(job, p) for p in done}
    if done:
        logger.info("%d of %d frames already done with these settings: skipped", len(done), len(paths))
    yield Progress(len(done), len(paths), "files", f"{len(done)} of {len(paths)} files done")
    if workers is None and scheduler is None and client is None:
        for path in todo:
            counts[path] = _segment_file(job, path, from_file[path])
            yield Progress(len(counts), len(paths), "files")
    else:
        yield from _on_engine(job, todo, from_file, counts, len(paths), workers, scheduler, client)
    shutil.rmtree(out / STAGING, ignore_errors=True)  # what killed tasks left
    return [(p, counts[p]) for p in paths]


def _on_engine(job: _Job, todo, from_file, counts, total, workers, scheduler, client):
    """One task per frame on dask.distributed; fills ``counts`` as frames finish."""
    from distributed import as_completed

    from .workflows.engine import client_for, gpu_resources, threads_per_host, unique_token

    if not todo:
        return
    c, close = client_for(client, scheduler, workers, device=job.device)
    futures: list = []
    try:
        token = unique_token(job.out)
        gpu = gpu_resources(c, job.device)
        mdl = c.scatter(job.model, broadcast=True, hash=False) if isinstance(job.model, tuple) else None
        run = replace(job, model=None if mdl is not None else job.model, threads=threads_per_host(c))
        futures = [c.submit(_frame_task, run, str(p), from_file[p], mdl, key=f"cellseg-frame-{k}-{token}",
                            pure=False, retries=2, resources=gpu) for k, p in enumerate(todo)]
        index = {f.key: p for f, p in zip(futures, todo, strict=True)}
        for fut in as_completed(futures):
            counts[index[fut.key]] = fut.result()  # a frame's error is the batch's error
            yield Progress(len(counts), total, "files")
    finally:
        if futures:  # stopped early (Cancel, an error): free the cluster
            c.cancel([f for f in futures if not f.done()])
        for obj in close:
            obj.close()
