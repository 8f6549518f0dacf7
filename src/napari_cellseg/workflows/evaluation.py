"""Scoring a folder of predicted label images against a folder of ground truth: the
workflow behind ``napari-cellseg evaluate``."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..core.metrics import Evaluation, evaluate, mean_scores
from ..io import files_by_stem, is_label_file, list_images, pair_stem, read_labels
from ..progress import Progress, drain

# The columns printed; the table itself holds every scalar score of each image.
SHOWN_COLUMNS = ("image", "n_true", "n_pred", "tp", "fp", "fn", "ap", "ap_50_95", "precision",
                 "recall", "ari", "dice", "sm")


def label_files(folder: str | Path) -> list[Path]:
    """Label images in a folder. Where some names end in _masks / _mask / _labels (a folder
    that also holds the raw images), only those count."""
    files = list_images(folder)
    tagged = [p for p in files if is_label_file(p)]
    return tagged or files


@dataclass
class FolderEvaluation:
    """Per-image results of a folder, their means, and the files that had no partner
    (listed, never skipped silently)."""

    iou: float
    min_size: int
    results: dict[str, Evaluation]  # image stem -> its evaluation
    unpaired_gt: list[Path] = field(default_factory=list)
    unpaired_pred: list[Path] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        """One row per image: its name and every scalar score (:meth:`Evaluation.summary`
        less the per-threshold APs)."""
        rows = [{"image": stem, **{k: v for k, v in r.summary().items() if k != "ap_by_threshold"}}
                for stem, r in self.results.items()]
        return pd.DataFrame(rows)

    def means(self) -> dict[str, float]:
        return mean_scores(list(self.results.values()))

    def to_dict(self) -> dict:
        return {"iou": self.iou, "min_size": self.min_size, **self.means(),
                "images": {stem: r.summary() for stem, r in self.results.items()},
                "unpaired_gt": [pair_stem(p) for p in self.unpaired_gt],
                "unpaired_pred": [pair_stem(p) for p in self.unpaired_pred]}


def iter_evaluate_folders(
    gt: str | Path, pred: str | Path, iou: float = 0.5, min_size: int = 0
) -> Generator[Progress, None, FolderEvaluation]:
    """Pair files by name (extension and a trailing _masks / _mask / _labels / _img
    removed), score each pair; yields :class:`Progress` per image.

    Raises
    ------
    ValueError
        No pair at all, or a pair whose shapes differ (naming both files).
    """
    gt_files, pred_files = files_by_stem(label_files(gt)), files_by_stem(label_files(pred))
    common = sorted(set(gt_files) & set(pred_files))
    if not common:
        def names(files: dict) -> str:
            listed = ", ".join(sorted(p.name for p in files.values())[:5])
            return f"{listed}{', ...' if len(files) > 5 else ''}" if files else "no label files"

        raise ValueError(f"no ground-truth / prediction pairs between {gt} ({names(gt_files)}) and {pred} "
                         f"({names(pred_files)}): files pair by name once the extension and a trailing "
                         "_masks / _mask / _labels, then _img, are removed")
    report = FolderEvaluation(
        iou, min_size, {},
        unpaired_gt=[gt_files[s] for s in sorted(set(gt_files) - set(pred_files))],
        unpaired_pred=[pred_files[s] for s in sorted(set(pred_files) - set(gt_files))])
    for i, stem in enumerate(common):
        g, p = read_labels(gt_files[stem]), read_labels(pred_files[stem])
        if g.shape != p.shape:
            raise ValueError(f"shapes differ: {gt_files[stem]} is {g.shape}, {pred_files[stem]} is {p.shape}")
        report.results[stem] = evaluate(g, p, iou=iou, min_size=min_size)
        yield Progress(i + 1, len(common), "images", message=f"scored {stem}")
    return report


def evaluate_folders(gt: str | Path, pred: str | Path, iou: float = 0.5, min_size: int = 0) -> FolderEvaluation:
    """:func:`iter_evaluate_folders`, drained."""
    return drain(iter_evaluate_folders(gt, pred, iou, min_size))
