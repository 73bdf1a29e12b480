"""mrcnn.visualize: every figure renders headless, saves a PNG of the right size atomically,
draws what it claims (mask colors read back from the PNG, text artists), and leaks no figure.
"""
import os
import pathlib
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from mrcnn import utils, visualize

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASS_NAMES = ["BG", "lesion", "nevus"]


def gray_image(height=100, width=120, value=128):
    return np.full((height, width, 3), value, dtype=np.uint8)


def one_instance(height=100, width=120):
    """One box + mask in the image centre: rows 30..70, cols 40..80 (exclusive ends)."""
    boxes = np.array([[30, 40, 70, 80]])
    masks = np.zeros((height, width, 1), dtype=bool)
    masks[30:70, 40:80, 0] = True
    return boxes, masks, np.array([1]), np.array([0.95])


def read_png(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def png_pixel(fig, ax, rgb, x, y):
    """The saved PNG's RGB at data point (x, y) of `ax`."""
    dx, dy = ax.transData.transform((x, y))
    height = rgb.shape[0]
    return rgb[int(round(height - dy)), int(round(dx))]


def all_texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


@pytest.fixture
def no_figure_leak():
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before


def assert_saved_png(path, width, height):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == (width, height)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "temp file left"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# --- every figure function: renders headless, saves, no temp file, no leak ------------

def _empty_masks(h=100, w=120):
    return np.zeros((h, w, 0), dtype=bool)


def _cases():
    boxes, masks, ids, scores = one_instance()
    image = gray_image()
    rois = np.array([[10, 10, 50, 60], [20, 30, 90, 100]])
    roi_masks = np.ones((2, 28, 28), dtype=np.float32)
    return {
        "display_images": (lambda p: visualize.display_images(
            [image, image[..., 0]], titles=["a", "b"], cols=2, save_path=p), (1400, 700)),
        "display_instances": (lambda p: visualize.display_instances(
            image, boxes, masks, ids, CLASS_NAMES, scores, figsize=(4, 3), save_path=p),
            (400, 300)),
        "display_instances_empty": (lambda p: visualize.display_instances(
            image, np.zeros((0, 4)), _empty_masks(), np.zeros(0, int), CLASS_NAMES,
            figsize=(3, 3), save_path=p), (300, 300)),
        "draw_rois": (lambda p: visualize.draw_rois(
            image, rois, rois + 2, roi_masks, np.array([1, 0]), CLASS_NAMES, save_path=p),
            (1200, 1200)),
        "draw_rois_empty": (lambda p: visualize.draw_rois(
            image, np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((0, 28, 28)),
            np.zeros(0, int), CLASS_NAMES, save_path=p), (1200, 1200)),
        "display_top_masks": (lambda p: visualize.display_top_masks(
            image, masks, ids, CLASS_NAMES, limit=2, save_path=p), (1400, 470)),
        "display_top_masks_empty": (lambda p: visualize.display_top_masks(
            image, _empty_masks(), np.zeros(0, int), CLASS_NAMES, limit=1, save_path=p),
            (1400, 700)),
        "plot_precision_recall": (lambda p: visualize.plot_precision_recall(
            0.75, [1, 1, 0.5], [0, 0.5, 1], save_path=p), (640, 480)),
        "plot_overlaps": (lambda p: visualize.plot_overlaps(
            np.array([1, 2]), np.array([1]), np.array([0.9]), np.array([[0.8, 0.1]]),
            CLASS_NAMES, save_path=p), (1200, 1000)),
        "plot_overlaps_empty": (lambda p: visualize.plot_overlaps(
            np.zeros(0, int), np.zeros(0, int), np.zeros(0), np.zeros((0, 0)),
            CLASS_NAMES, save_path=p), (1200, 1000)),
        "draw_boxes": (lambda p: visualize.draw_boxes(
            image, boxes=rois, refined_boxes=rois + 3, masks=np.zeros((100, 120, 2), bool),
            captions=["x", "y"], visibilities=[0, 2], save_path=p), (1200, 1200)),
        "draw_boxes_empty": (lambda p: visualize.draw_boxes(
            image, boxes=np.zeros((0, 4)), save_path=p), (1200, 1200)),
        "plot_confusion_matrix": (lambda p: visualize.plot_confusion_matrix(
            np.array([[3, 1], [0, 4]]), ["a", "b"], save_path=p), (430, 430)),
        "plot_histogram": (lambda p: visualize.plot_histogram(
            [0.2, 0.7, 0.8, 0.9], 10, "Jaccard", "J", save_path=p), (640, 480)),
        "plot_histogram_empty": (lambda p: visualize.plot_histogram(
            [], 10, "Jaccard", "J", save_path=p), (640, 480)),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
def test_figure_saves_png_of_figure_size(name, tmp_path, no_figure_leak):
    draw, (width, height) = _cases()[name]
    path = tmp_path / "out" / f"{name}.png"
    fig = draw(path)
    assert isinstance(fig, Figure)
    assert_saved_png(path, width, height)
    # The documented size is figsize x dpi, whatever the function chose.
    w_in, h_in = fig.get_size_inches()
    assert (width, height) == (round(w_in * fig.dpi), round(h_in * fig.dpi))


def test_figures_render_without_save_path(no_figure_leak):
    boxes, masks, ids, scores = one_instance()
    fig = visualize.display_instances(gray_image(), boxes, masks, ids, CLASS_NAMES, scores,
                                      figsize=(2, 2))
    fig.canvas.draw()
    assert isinstance(fig, Figure)
    assert "lesion 0.950" in all_texts(fig)


def test_import_leaves_pyplot_and_backend_alone():
    # A notebook user's backend must survive importing the module.
    code = ("import sys, matplotlib; matplotlib.use('svg'); import mrcnn.visualize; "
            "print('matplotlib.pyplot' in sys.modules, matplotlib.get_backend())")
    env = dict(os.environ, MPLBACKEND="")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == ["False", "svg"]


# --- display_instances draws the mask -------------------------------------------------

@pytest.mark.parametrize("show_mask", [True, False])
def test_display_instances_paints_mask_color(show_mask, tmp_path):
    boxes, masks, ids, scores = one_instance()
    path = tmp_path / "inst.png"
    fig = visualize.display_instances(gray_image(), boxes, masks, ids, CLASS_NAMES, scores,
                                      figsize=(4, 4), colors=[(1.0, 0.0, 0.0)],
                                      show_mask=show_mask, save_path=path)
    rgb = read_png(path)
    ax = fig.axes[0]
    centre = png_pixel(fig, ax, rgb, 60, 50)
    background = png_pixel(fig, ax, rgb, 8, 90)
    # 128 * (1 - 0.5) + 0.5 * 255 = 191.5 (red); 128 * 0.5 = 64 (green, blue)
    expected = [191, 64, 64] if show_mask else [128, 128, 128]
    assert np.all(np.abs(centre - expected) <= 3), centre
    assert np.all(np.abs(background - 128) <= 3), background


def test_display_instances_captions_and_padding_rows():
    boxes = np.array([[30, 40, 70, 80], [0, 0, 0, 0]])
    masks = np.zeros((100, 120, 2), dtype=bool)
    masks[30:70, 40:80, 0] = True
    fig = visualize.display_instances(gray_image(), boxes, masks, np.array([2, 1]), CLASS_NAMES,
                                      np.array([0.5, 0.4]), figsize=(2, 2))
    assert all_texts(fig) == ["nevus 0.500"]  # the all-zero box is padding, skipped
    fig = visualize.display_instances(gray_image(), boxes[:1], masks[..., :1], [1], CLASS_NAMES,
                                      captions=["custom"], figsize=(2, 2))
    assert all_texts(fig) == ["custom"]


def test_display_instances_outline_follows_mask():
    boxes, masks, ids, _ = one_instance()
    fig = visualize.display_instances(gray_image(), boxes, masks, ids, CLASS_NAMES,
                                      figsize=(2, 2), show_bbox=False)
    polygons = [p for p in fig.axes[0].patches if type(p).__name__ == "Polygon"]
    assert len(polygons) == 1
    xy = polygons[0].get_xy()
    # Contour at level 0.5 lies half a pixel outside the pixel centres 40..79, 30..69.
    assert np.isclose(xy[:, 0].min(), 39.5) and np.isclose(xy[:, 0].max(), 79.5)
    assert np.isclose(xy[:, 1].min(), 29.5) and np.isclose(xy[:, 1].max(), 69.5)


def test_display_instances_draws_into_given_axes(tmp_path, no_figure_leak):
    fig = Figure(figsize=(3, 2))
    ax = fig.add_subplot(1, 1, 1)
    boxes, masks, ids, scores = one_instance()
    path = tmp_path / "given.png"
    out = visualize.display_instances(gray_image(), boxes, masks, ids, CLASS_NAMES, scores,
                                      ax=ax, save_path=path)
    assert out is fig
    assert_saved_png(path, 300, 200)


@pytest.mark.parametrize("bad", [
    dict(masks=np.zeros((100, 120, 2), bool)),       # 2 masks, 1 box
    dict(masks=np.zeros((50, 120, 1), bool)),        # wrong size
    dict(class_ids=np.array([1, 2])),                # 2 ids, 1 box
    dict(class_ids=np.array([7])),                   # id outside class_names
])
def test_display_instances_rejects_inconsistent_input(bad):
    boxes, masks, ids, scores = one_instance()
    args = dict(masks=masks, class_ids=ids)
    args.update(bad)
    with pytest.raises(ValueError):
        visualize.display_instances(gray_image(), boxes, args["masks"], args["class_ids"],
                                    CLASS_NAMES, figsize=(2, 2))


def test_save_path_must_be_png(tmp_path):
    with pytest.raises(ValueError, match="png"):
        visualize.plot_histogram([0.5], 5, "t", "x", save_path=tmp_path / "h.jpg")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    fig = visualize.plot_histogram([0.5], 5, "t", "x")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(OSError):
        visualize._save_png(fig, tmp_path / "h.png")
    assert list(tmp_path.iterdir()) == []


# --- arrays: random_colors, apply_mask, draw_box, overlay_masks ------------------------

def test_random_colors_seeded_and_distinct():
    assert visualize.random_colors(6, seed=3) == visualize.random_colors(6, seed=3)
    orders = {tuple(visualize.random_colors(6, seed=s)) for s in range(10)}
    assert len(orders) > 1
    colors = visualize.random_colors(6, seed=3)
    assert len(set(colors)) == 6
    assert all(max(c) == pytest.approx(1.0) for c in colors)
    assert all(max(c) == pytest.approx(0.7) for c in visualize.random_colors(4, bright=False))
    assert visualize.random_colors(0) == []


def test_apply_mask_blends_inside_only():
    image = np.full((4, 5, 3), 100, dtype=np.float64)
    mask = np.zeros((4, 5), dtype=bool)
    mask[1:3, 2] = True
    out = visualize.apply_mask(image, mask, (1.0, 0.0, 0.2), alpha=0.25)
    assert out is image
    # 100 * 0.75 + 0.25 * 255 * c
    np.testing.assert_allclose(image[1, 2], [75 + 63.75, 75, 75 + 12.75])
    np.testing.assert_allclose(image[~mask], 100)


def test_draw_box_in_place():
    image = np.zeros((10, 12, 3), dtype=np.uint8)
    out = visualize.draw_box(image, (2, 3, 8, 9), (255, 0, 0))
    assert out is image
    border = np.zeros((10, 12), bool)
    border[2:8, 3:9] = True
    border[4:6, 5:7] = False  # 2-pixel outline leaves the 2x2 centre
    assert np.all(image[border] == [255, 0, 0])
    assert np.all(image[~border] == 0)


def test_overlay_masks_changes_only_mask_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    masks = np.zeros((60, 80, 2), dtype=bool)
    masks[10:30, 10:40, 0] = True
    masks[0:20, 60:80, 1] = True  # touches the image edge
    original = image.copy()
    out = visualize.overlay_masks(image, masks, colors=[(0, 1, 0), (0, 0, 1)])
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(image, original)
    inside = masks.any(-1)
    np.testing.assert_array_equal(out[~inside], image[~inside])
    assert np.all(np.any(out[inside] != image[inside], axis=-1))
    # Outline pixels carry the full color, the interior is blended.
    assert list(out[10, 20]) == [0, 255, 0]
    assert list(out[0, 70]) == [0, 0, 255]  # image edge counts as mask edge
    expected = np.round(image[20, 25] * 0.55 + 0.45 * np.array([0, 255, 0]))
    np.testing.assert_allclose(out[20, 25], expected, atol=1)
    no_outline = visualize.overlay_masks(image, masks[..., :1], colors=[(0, 1, 0)],
                                         outline=False)
    np.testing.assert_allclose(no_outline[10, 20],
                               np.round(image[10, 20] * 0.55 + [0, 0.45 * 255, 0]), atol=1)


def test_overlay_masks_empty_and_grayscale():
    image = np.full((20, 30), 90, dtype=np.uint8)
    out = visualize.overlay_masks(image, np.zeros((20, 30, 0), bool))
    assert out.shape == (20, 30, 3)
    assert np.all(out == 90)
    with pytest.raises(ValueError):
        visualize.overlay_masks(image, np.zeros((10, 30, 1), bool))


# --- text content ----------------------------------------------------------------------

def test_confusion_matrix_counts_and_fractions():
    cm = np.array([[3, 1, 0], [0, 4, 0], [2, 0, 0]])
    fig = visualize.plot_confusion_matrix(cm, ["a", "b", "c"])
    texts = all_texts(fig)
    assert len(texts) == 9
    # Row-major cells; row "c" has 2 samples, all predicted "a".
    assert texts[0] == "0.75\n(3)" and texts[1] == "0.25\n(1)"
    assert texts[4] == "1.00\n(4)"
    assert texts[6] == "1.00\n(2)" and texts[8] == "0.00\n(0)"
    raw = visualize.plot_confusion_matrix(cm, ["a", "b", "c"], normalize=False)
    assert all_texts(raw) == ["3", "1", "0", "0", "4", "0", "2", "0", "0"]
    empty_row = visualize.plot_confusion_matrix(np.zeros((2, 2), int), ["a", "b"])
    assert all_texts(empty_row) == ["0.00\n(0)"] * 4
    with pytest.raises(ValueError):
        visualize.plot_confusion_matrix(cm, ["a", "b"])


def test_plot_overlaps_match_and_wrong():
    fig = visualize.plot_overlaps(np.array([1, 2, 0]), np.array([1, 1]), np.array([0.9, 0.8]),
                                  np.array([[0.8, 0.1], [0.2, 0.6]]), CLASS_NAMES)
    assert all_texts(fig) == ["0.800\nmatch", "0.100\n", "0.200\n", "0.600\nwrong"]
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["lesion (0.90)", "lesion (0.80)"]


def test_plot_histogram_mean_and_bad_values():
    fig = visualize.plot_histogram([0.2, 0.4, 0.9], 5, "J", "Jaccard")
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "mean = 0.500"
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert sum(heights) == 3
    with pytest.raises(ValueError, match="non-finite"):
        visualize.plot_histogram([0.2, np.nan], 5, "J", "Jaccard")


def test_draw_rois_pastes_roi_masks(tmp_path):
    image = gray_image(60, 60)
    rois = np.array([[10, 10, 30, 40]])
    roi_mask = np.ones((1, 28, 28), dtype=np.float32)
    path = tmp_path / "rois.png"
    fig = visualize.draw_rois(image, rois, rois, roi_mask, np.array([2]), CLASS_NAMES,
                              save_path=path)
    rgb = read_png(path)
    ax = fig.axes[0]
    assert np.any(np.abs(png_pixel(fig, ax, rgb, 25, 20) - 128) > 20)  # inside the ROI
    assert np.all(np.abs(png_pixel(fig, ax, rgb, 50, 50) - 128) <= 3)  # outside
    assert "nevus" in all_texts(fig)


def test_draw_boxes_rejects_bad_visibility():
    with pytest.raises(ValueError, match="visibilities"):
        visualize.draw_boxes(gray_image(), boxes=np.array([[1, 1, 5, 5]]), visibilities=[3])
    with pytest.raises(ValueError):
        visualize.draw_boxes(gray_image())


def test_display_weight_stats_flags_dead_weights(capsys):
    class Var:
        def __init__(self, path):
            self.path = path

    class Dense:
        weights = [Var("dense/kernel"), Var("dense/bias")]

        def get_weights(self):
            return [np.array([[1.0, -2.0]]), np.zeros(2)]

    class Model:
        def get_trainable_layers(self):
            return [Dense()]

    table = visualize.display_weight_stats(Model())
    assert [row[0] for row in table] == ["WEIGHT NAME", "dense/kernel", "dense/bias *** dead?"]
    assert table[1][1:4] == ["(1, 2)", "  -2.0000", "   +1.0000"]
    assert "dense/kernel" in capsys.readouterr().out


# --- display_differences ---------------------------------------------------------------

def _two_instances():
    gt_box = np.array([[10, 10, 50, 50]])
    gt_mask = np.zeros((100, 120, 1), bool)
    gt_mask[10:50, 10:50] = True
    pred_box = np.array([[60, 60, 90, 100], [10, 10, 50, 50]])
    pred_mask = np.zeros((100, 120, 2), bool)
    pred_mask[60:90, 60:100, 0] = True
    pred_mask[10:50, 10:50, 1] = True
    return gt_box, np.array([1]), gt_mask, pred_box, np.array([1, 1]), np.array([0.6, 0.9]), \
        pred_mask


def test_display_differences_captions_with_stub(monkeypatch, tmp_path):
    calls = []

    def stub(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores,
             pred_masks, iou_threshold=0.5, score_threshold=0.0):
        calls.append(np.asarray(pred_scores).copy())
        # Sorted input: pred 0 = the 0.9 one, matching GT 0 at IoU 0.8; pred 1 unmatched.
        return np.array([0]), np.array([0, -1]), np.array([[0.8], [0.3]])

    monkeypatch.setattr(utils, "compute_matches", stub)
    path = tmp_path / "diff.png"
    fig = visualize.display_differences(gray_image(), *_two_instances(), CLASS_NAMES,
                                        save_path=path)
    np.testing.assert_allclose(calls[0], [0.9, 0.6])  # predictions passed by score
    assert sorted(all_texts(fig)) == ["0.60 / 0.30", "0.90 / 0.80"]
    assert "GT=green" in fig.axes[0].get_title()
    assert_saved_png(path, 1600, 1600)


def test_display_differences_with_real_compute_matches():
    fig = visualize.display_differences(gray_image(), *_two_instances(), CLASS_NAMES)
    # The 0.9 prediction equals the GT (IoU 1); the 0.6 one does not touch it (IoU 0).
    assert sorted(all_texts(fig)) == ["0.60 / 0.00", "0.90 / 1.00"]


def test_display_differences_ignores_padding_rows():
    gt_box, gt_ids, gt_mask, pred_box, pred_ids, pred_scores, pred_mask = _two_instances()
    # Detections padded with an all-zero row, as the model returns them.
    pred_box = np.concatenate([pred_box, np.zeros((1, 4), int)])
    pred_ids = np.append(pred_ids, 0)
    pred_scores = np.append(pred_scores, 0.0)
    pred_mask = np.concatenate([pred_mask, np.zeros((100, 120, 1), bool)], axis=-1)
    fig = visualize.display_differences(gray_image(), gt_box, gt_ids, gt_mask, pred_box,
                                        pred_ids, pred_scores, pred_mask, CLASS_NAMES)
    assert sorted(all_texts(fig)) == ["0.60 / 0.00", "0.90 / 1.00"]


def test_display_differences_without_ground_truth():
    _, _, _, pred_box, pred_ids, pred_scores, pred_mask = _two_instances()
    fig = visualize.display_differences(gray_image(), np.zeros((0, 4)), np.zeros(0, int),
                                        np.zeros((100, 120, 0), bool), pred_box, pred_ids,
                                        pred_scores, pred_mask, CLASS_NAMES)
    assert sorted(all_texts(fig)) == ["0.60 / 0.00", "0.90 / 0.00"]
