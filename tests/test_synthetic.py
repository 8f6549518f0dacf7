import numpy as np
import pytest

from napari_cellseg.core import synthetic as syn


def test_lesson_image_constants_and_determinism():
    image, centers = syn.make_image()
    assert image.shape == (syn.IMAGE_SIZE, syn.IMAGE_SIZE)
    assert centers.shape == (syn.N_CELLS, 2)
    assert image.min() >= 0
    d = np.hypot(*(centers[:, None] - centers[None]).transpose(2, 0, 1))
    assert d[np.triu_indices(syn.N_CELLS, 1)].min() >= syn.MIN_SEPARATION
    again, _ = syn.make_image()
    np.testing.assert_array_equal(image, again)


def test_gaussian_blob_peak_and_width():
    blob = syn.gaussian_blobs(np.array([[10.0, 20.0]]), (21, 41), sigma=6, brightness=1.0)
    assert blob[10, 20] == pytest.approx(1.0)
    assert blob[10, 26] == pytest.approx(np.exp(-0.5))  # one sigma away


def test_pure_noise_is_clipped_noise():
    noise = syn.make_pure_noise()
    assert noise.min() == 0.0
    # About half the samples are clipped to 0; the rest follow |N(0, 0.15)|.
    assert 0.4 < np.mean(noise == 0) < 0.6
    assert noise[noise > 0].mean() == pytest.approx(0.15 * np.sqrt(2 / np.pi), rel=0.05)


def test_blob_labels_split_by_nearest_centre():
    labels = syn.blob_labels(np.array([[10.0, 10.0], [10.0, 20.0]]), (21, 31), sigma=6)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert labels[10, 14] == 1 and labels[10, 16] == 2


def test_bright_dim_scene_truth():
    scene = syn.make_bright_dim_image()
    assert scene.bright.sum() == 4 and (~scene.bright).sum() == 4
    assert scene.labels.max() == 8


def test_gradient_is_added():
    flat = syn.make_image()[0]
    ramp = syn.make_gradient_image().image
    # Same seed, same noise: the difference is the ramp where nothing was clipped.
    both = (flat > 0) & (ramp > 0)
    diff = (ramp - flat)[both]
    cols = np.nonzero(both)[1]
    np.testing.assert_allclose(diff, 0.2 * cols / syn.IMAGE_SIZE, atol=1e-9)


@pytest.mark.parametrize("stain", ["cytoplasm", "membrane"])
def test_whole_cell_image_truth(stain):
    scene = syn.make_whole_cell_image(seed=3, shape=(128, 160), cell_radius=9, stain=stain)
    labels, nuclei = scene.labels, scene.nucleus_labels
    n = labels.max()
    assert n > 10
    np.testing.assert_array_equal(np.unique(labels), np.arange(n + 1))  # consecutive
    inside = nuclei > 0
    np.testing.assert_array_equal(nuclei[inside], labels[inside])  # a nucleus sits in its cell
    assert set(np.unique(nuclei)) == set(range(n + 1))  # every cell has a nucleus
    img = scene.image
    assert img.dtype == np.float32 and img.shape == (128, 160)
    cyto = (labels > 0) & ~inside
    if stain == "cytoplasm":
        assert img[cyto].mean() > 1.5 * img[inside].mean()  # dim nucleus
    again = syn.make_whole_cell_image(seed=3, shape=(128, 160), cell_radius=9, stain=stain)
    np.testing.assert_array_equal(again.labels, labels)


def test_bad_parameters_are_clear():
    with pytest.raises(ValueError, match="stain"):
        syn.make_whole_cell_image(stain="dapi")
    with pytest.raises(ValueError, match="could not place"):
        syn.make_image(n_cells=50, min_separation=60)


def test_tissue_image_truth():
    from skimage.measure import label as cc_label

    a = syn.make_tissue_image(seed=4, shape=(128, 160))
    b = syn.make_tissue_image(seed=4, shape=(128, 160))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.image.dtype == np.float32 and a.image.shape == (128, 160) and a.image.min() >= 0
    k = int(a.labels.max())
    assert k >= 20 and np.array_equal(np.unique(a.labels), np.arange(k + 1))  # ids 1..K
    assert len(a.centers) == k and a.nucleus_labels is None
    for i in range(1, k + 1):  # each cell one 4-connected piece
        assert cc_label(a.labels == i, connectivity=1).max() == 1
    # Stained cells are brighter than the rest of the image on average.
    assert a.image[a.labels > 0].mean() > 3 * a.image[a.labels == 0].mean()
    # Every cell stained: more labelled cells than with 40 % stained, same layout.
    all_stained = syn.make_tissue_image(seed=4, shape=(128, 160), stained_fraction=1.0)
    few = syn.make_tissue_image(seed=4, shape=(128, 160), stained_fraction=0.4)
    assert all_stained.labels.max() > a.labels.max() > few.labels.max()
    with pytest.raises(ValueError, match="stained_fraction"):
        syn.make_tissue_image(stained_fraction=0)
    with pytest.raises(ValueError, match="photons"):
        syn.make_tissue_image(photons=-1)


def test_nuclei_image_truth_and_glow():
    from scipy import ndimage as ndi
    from skimage.measure import label as cc_label

    a = syn.make_nuclei_image(seed=5, shape=(160, 128), photons=1e6, read_noise=0.0)
    b = syn.make_nuclei_image(seed=5, shape=(160, 128), photons=1e6, read_noise=0.0)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.image.dtype == np.float32 and a.image.shape == (160, 128) and a.image.min() >= 0
    k = int(a.labels.max())
    assert k >= 10 and np.array_equal(np.unique(a.labels), np.arange(k + 1)) and len(a.centers) == k
    for i in range(1, k + 1):  # each nucleus one 4-connected piece
        assert cc_label(a.labels == i, connectivity=1).max() == 1
    # The truth is the nucleus's own extent: bright inside, and the glow outside it.
    ring = ndi.binary_dilation(a.labels > 0, iterations=2) & (a.labels == 0)
    inner = ndi.binary_erosion(a.labels > 0, iterations=2)
    assert a.image[inner].mean() > 3 * a.image[ring].mean()
    sharp = syn.make_nuclei_image(seed=5, shape=(160, 128), photons=1e6, read_noise=0.0, glow=0.0)
    glowing = syn.make_nuclei_image(seed=5, shape=(160, 128), photons=1e6, read_noise=0.0, glow=0.5)
    assert np.array_equal(sharp.labels, a.labels) and np.array_equal(glowing.labels, a.labels)
    # 3-6 px outside the nuclei, past the point-spread function's reach (sigma 1 px): the glow.
    halo = ndi.binary_dilation(a.labels > 0, iterations=6) & ~ndi.binary_dilation(a.labels > 0, iterations=3)
    # Same seed, same nuclei, background and noise draws: the difference is the glow alone.
    glow = (glowing.image[halo].mean() - sharp.image[halo].mean()) / sharp.image[inner].mean()
    assert 0.03 < glow < 0.5
    assert 0.75 < glowing.image[inner].mean() / sharp.image[inner].mean() < 1.0  # light moved, not added
    with pytest.raises(ValueError, match="glow"):
        syn.make_nuclei_image(glow=1.0)
    with pytest.raises(ValueError, match="photons"):
        syn.make_nuclei_image(photons=0)


def test_synthetic_examples_nuclei_keep_the_whole_cell_images():
    from napari_cellseg.model.data import synthetic_examples

    plain = synthetic_examples(2, seed=3, size=96)
    mixed = synthetic_examples(2, seed=3, size=96, nuclei=2)
    assert [e.name for e in mixed] == ["synthetic0", "synthetic1", "nuclei0", "nuclei1"]
    for p, m in zip(plain, mixed[:2], strict=True):
        assert np.array_equal(p.image, m.image) and np.array_equal(p.target, m.target)
    assert all(e.labels.max() > 0 and e.nucleus_labels is None for e in mixed[2:])
    with pytest.raises(ValueError, match="no whole nucleus"):  # in words, not an endless loop
        synthetic_examples(0, seed=3, size=4, nuclei=1)
