"""isic.outputs.refinement: Task 1 test-time flips and full-resolution mask refinement."""
import numpy as np
import pytest

from isic.outputs import refinement
from mrcnn.config import ConfigError


def _disc(shape, center, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius ** 2


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def _lesion_image(rng, shape=(240, 320)):
    """Skin-coloured noise with a dark-brown disc lesion: an edge GrabCut can find."""
    truth = _disc(shape, (120, 170), 70)
    image = np.empty(shape + (3,), np.float64)
    image[:] = (205, 160, 140)
    image[truth] = (110, 70, 50)
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def test_largest_component_filled_keeps_one_blob_without_holes():
    mask = _disc((100, 100), (50, 50), 30)
    mask[45:55, 45:55] = False  # a hole
    mask[2:6, 2:6] = True  # a speck
    out = refinement.largest_component_filled(mask)
    assert out[50, 50] and not out[3, 3]
    assert out.sum() == _disc((100, 100), (50, 50), 30).sum()
    assert not refinement.largest_component_filled(np.zeros((5, 5), bool)).any()


@pytest.mark.parametrize("radius", [55, 85])  # a seed inside and a seed outside the true boundary
def test_grabcut_moves_a_coarse_mask_to_the_lesion_edge(radius):
    image, truth = _lesion_image(np.random.default_rng(0))
    seed = _disc(truth.shape, (120, 170), radius)
    refined = refinement.grabcut_refine(image, seed)
    assert refined.shape == truth.shape and refined.dtype == bool
    assert _iou(refined, truth) > 0.95 > _iou(seed, truth) + 0.15


def test_grabcut_leaves_empty_and_tiny_masks_alone():
    image, _ = _lesion_image(np.random.default_rng(1))
    empty = np.zeros(image.shape[:2], bool)
    assert not refinement.grabcut_refine(image, empty).any()
    tiny = empty.copy()
    tiny[10:14, 10:14] = True
    assert (refinement.grabcut_refine(image, tiny) == tiny).all()


class _FlipAwareModel:
    """detect() returns, as the top detection, the dark pixels of what it is given, plus a
    stray block in the top-left corner of the (possibly flipped) input."""

    def __init__(self):
        self.calls = 0

    def detect(self, images):
        self.calls += 1
        image = images[0]
        mask = image.mean(axis=2) < 128
        mask[:20, :20] = True
        return [{"masks": mask[..., None], "scores": np.array([0.9], np.float32),
                 "class_ids": np.array([1], np.int32)}]


def test_flip_vote_keeps_what_most_views_agree_on():
    image, truth = _lesion_image(np.random.default_rng(2))
    image[truth] = (40, 30, 20)
    image[~truth] = (220, 180, 160)
    model = _FlipAwareModel()
    voted = refinement.flip_vote_mask(model, image)
    assert model.calls == 4
    # Each flipped view puts its stray block in a different original corner: 1 vote of 4 each.
    assert (voted == truth).all()


def test_task1_mask_applies_the_config_choice():
    image, truth = _lesion_image(np.random.default_rng(3))
    seed = _disc(truth.shape, (120, 170), 85)
    result = {"masks": seed[..., None], "scores": np.array([0.8], np.float32)}
    model = _FlipAwareModel()

    class Cfg:
        TASK1_TTA_FLIPS = False
        TASK1_MASK_REFINEMENT = "none"

    assert (refinement.task1_mask(model, image, result, Cfg) == seed).all()
    Cfg.TASK1_MASK_REFINEMENT = "grabcut"
    assert _iou(refinement.task1_mask(model, image, result, Cfg), truth) > 0.95
    assert model.calls == 0


def test_config_rejects_unknown_task1_options():
    import lesions
    with pytest.raises(ConfigError, match="TASK1_MASK_REFINEMENT"):
        lesions.make_config("segmentation", overrides=[("TASK1_MASK_REFINEMENT", "crf")])
    with pytest.raises(ConfigError, match="TASK1_TTA_FLIPS"):
        lesions.make_config("segmentation", overrides=[("TASK1_TTA_FLIPS", "yes")])
    with pytest.raises(ConfigError, match="AUGMENTATION"):
        lesions.make_config("segmentation", overrides=[("AUGMENTATION", "colour")])
    assert lesions.make_config("segmentation", overrides=[("AUGMENTATION", "geometric")]).AUGMENTATION == "geometric"


def _mottled_lesion(seed, shape=(300, 400)):
    """A lesion of several colours on mottled skin, with a coarse seed mask: GrabCut's
    colour models then depend on how its k-means starts."""
    rng = np.random.default_rng(seed)
    truth = _disc(shape, (150, 200), 90)
    image = rng.normal(0, 25, shape + (3,)) + (200, 150, 130)
    patches = rng.integers(0, 3, (shape[0] // 10 + 1, shape[1] // 10 + 1)).repeat(10, 0).repeat(10, 1)
    palette = np.array([(120, 70, 50), (80, 50, 40), (150, 100, 90)], np.float64)
    image[truth] = palette[patches[:shape[0], :shape[1]][truth]] + rng.normal(0, 25, (truth.sum(), 3))
    return np.clip(image, 0, 255).astype(np.uint8), _disc(shape, (155, 195), 105)


def test_grabcut_result_depends_on_the_image_alone():
    import cv2
    image, seed_mask = _mottled_lesion(5)
    cv2.setRNGSeed(1)
    alone = refinement.grabcut_refine(image, seed_mask)
    again = refinement.grabcut_refine(image, seed_mask)
    for other in (6, 7):  # other images in between move OpenCV's random state on
        refinement.grabcut_refine(*_mottled_lesion(other))
    cv2.setRNGSeed(987654)
    among_others = refinement.grabcut_refine(image, seed_mask)
    assert alone.any()
    assert (alone == again).all() and (alone == among_others).all()


def test_grabcut_on_a_large_lesion_works_at_a_size_set_by_the_lesion(monkeypatch):
    """A lesion 2,000 px across: GrabCut sees a region scaled so the lesion is at most
    GRABCUT_DIAMETER px across, no structuring element is built, and the boundary still
    lands on the lesion's edge at full resolution."""
    import cv2
    shape, centre = (2400, 3200), (1200, 1650)
    truth = _disc(shape, centre, 1000)
    image = np.empty(shape + (3,), np.uint8)
    image[:] = (205, 160, 140)
    image[truth] = (110, 70, 50)
    seen = []
    real_grabcut = cv2.grabCut

    def recording_grabcut(img, mask, *args):
        seen.append(img.shape[:2])
        return real_grabcut(img, mask, *args)

    def no_kernel(*args, **kwargs):
        raise AssertionError("a structuring element that grows with the lesion")

    monkeypatch.setattr(cv2, "grabCut", recording_grabcut)
    monkeypatch.setattr(cv2, "getStructuringElement", no_kernel)
    monkeypatch.setattr(cv2, "erode", no_kernel)
    monkeypatch.setattr(cv2, "dilate", no_kernel)
    seed = _disc(shape, (centre[0] + 60, centre[1] - 40), 1080)
    refined = refinement.grabcut_refine(image, seed)
    assert len(seen) == 1 and max(seen[0]) <= 2 * refinement.GRABCUT_DIAMETER
    assert refined.shape == shape
    assert _iou(refined, truth) > 0.99 > _iou(seed, truth) + 0.1


def test_flips_detect_on_a_bounded_copy_and_vote_at_full_size():
    image, truth = _lesion_image(np.random.default_rng(4), shape=(1200, 1600))
    image[truth] = (40, 30, 20)
    image[~truth] = (220, 180, 160)
    model = _FlipAwareModel()
    sizes = []
    real_detect = model.detect

    def detect(images):
        sizes.append(images[0].shape[:2])
        return real_detect(images)

    model.detect = detect
    voted = refinement.flip_vote_mask(model, image, max_side=400)
    assert sizes == [(300, 400)] * 4
    assert voted.shape == truth.shape and _iou(voted, truth) > 0.97
