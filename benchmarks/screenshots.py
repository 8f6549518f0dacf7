"""README screenshots, taken in a real napari window (run under Xvfb):

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/screenshots.py --out docs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(exist_ok=True)

    import imageio.v3 as iio
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cellseg._widgets.classic import ClassicWidget
    from napari_cellseg._widgets.compare import CompareWidget
    from napari_cellseg._widgets.segment_cells import SegmentCellsWidget
    from napari_cellseg.sample_data import lesson_image, tissue_scene

    def settle(n=20):
        for _ in range(n):
            QApplication.processEvents()

    # The whole workflow: one click, then Compare with the ground truth.
    viewer = napari.Viewer(show=True)  # creates the QApplication
    viewer.window._qt_window.resize(1500, 950)
    scene = tissue_scene()
    viewer.add_image(scene.image, name="synthetic tissue", metadata={"pixel_size_um": 0.5})
    viewer.add_labels(scene.labels, name="ground truth", visible=False)
    seg = SegmentCellsWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment cells")
    seg.run()
    while seg._runner.worker is not None:
        QApplication.processEvents()
    cmp = CompareWidget(viewer)
    viewer.window.add_dock_widget(cmp, name="Compare with ground truth")
    cmp._gt.value = viewer.layers["ground truth"]
    cmp._pred.value = viewer.layers["cells"]
    cmp.run()
    viewer.layers["cells"].visible = False
    viewer.reset_view()
    viewer.camera.zoom *= 1.6
    viewer.camera.center = (160, 200)
    settle()
    iio.imwrite(out / "workflow.png", viewer.screenshot(canvas_only=False, flash=False))
    viewer.close()

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1100, 700)
    viewer.add_image(lesson_image(), name="lesson image")
    w = ClassicWidget(viewer)
    viewer.window.add_dock_widget(w, name="Classic segmentation")
    n_classic = int(np.max(w.run().data))
    viewer.reset_view()
    settle()
    iio.imwrite(out / "classic_widget.png", viewer.screenshot(canvas_only=False, flash=False))
    viewer.close()
    print(f"wrote {out / 'workflow.png'} and {out / 'classic_widget.png'}; classic: {n_classic} cells")


if __name__ == "__main__":
    main()
