"""load_image_gt, the MaskRCNNSequence batch feeder, and image/mask augmentation."""
import logging
import pickle
import random
import sys
import types

import albumentations as A
import numpy as np
import pytest
import scipy.ndimage

from mrcnn import utils
from mrcnn.data.augment import (AugmentationError, ImgaugNotInstalledError, apply_augmentation,
                                default_augmentation)
from mrcnn.data.feed import DataPipelineError, MaskRCNNSequence, load_image_gt
from tests.helpers import tiny_config

FILL = 200  # pixel value inside instances


class ShapesDataset(utils.Dataset):
    """Tiny synthetic dataset. Image i: 64x64 (i == 1: 50x70); i % 3 == 0 has no instance,
    the others two rectangles of class 1; ids in `broken` fail to load their masks."""

    def __init__(self, count=6, broken=()):
        super().__init__()
        self.broken = set(broken)
        self.add_class("shapes", 1, "rectangle")
        self.add_class("other", 1, "unused")  # a second source: its class is inactive for "shapes"
        for i in range(count):
            h, w = (50, 70) if i == 1 else (64, 64)
            self.add_image("shapes", i, f"synthetic/{i}.png", height=h, width=w)
        self.prepare()

    def load_image(self, image_id):
        mask, _ = self.load_mask(image_id)
        info = self.image_info[image_id]
        image = np.full((info["height"], info["width"], 3), 30, np.uint8)
        image[mask.any(axis=-1)] = FILL
        return image

    def load_mask(self, image_id):
        if image_id in self.broken:
            raise OSError(f"cannot read the mask of image {image_id}")
        info = self.image_info[image_id]
        if image_id % 3 == 0:
            return np.zeros((info["height"], info["width"], 0), bool), np.zeros([0], np.int32)
        mask = np.zeros((info["height"], info["width"], 2), bool)
        mask[5:20, 5:20, 0] = True
        mask[30:50, 40:60, 1] = True
        return mask, np.array([1, 1], np.int32)


def make_config(**overrides):
    """The tests' tiny network (tests.helpers.tiny_config) with 3 classes."""
    return tiny_config(**{"NAME": "data", "NUM_CLASSES": 3, **overrides})


def all_batches(seq):
    return [seq[i][0] for i in range(len(seq))]


############################################################
#  load_image_gt
############################################################

def test_load_image_gt_resizes_and_lays_out_the_meta():
    config = make_config()
    image, meta, class_ids, bbox, mask = load_image_gt(ShapesDataset(), config, 1, use_mini_mask=False)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert meta.shape == (config.IMAGE_META_SIZE,)
    # 50x70 -> scale 64/70, 46x64 after resizing, padded 9 rows on top (by hand).
    assert meta[0] == 1
    assert meta[1:4].tolist() == [50, 70, 3] and meta[4:7].tolist() == [64, 64, 3]
    assert meta[7:11].tolist() == [9, 0, 55, 64]
    assert meta[11] == pytest.approx(64 / 70)
    assert meta[12:].tolist() == [1, 1, 0]  # BG, shapes.1 active; other.1 not
    assert class_ids.tolist() == [1, 1] and mask.shape == (64, 64, 2) and mask.dtype == bool
    for i in range(2):
        rows, cols = np.where(mask[:, :, i])
        assert bbox[i].tolist() == [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]
        # Bilinear resizing blends the edge pixels and truncates (200 may become 199) inside.
        interior = scipy.ndimage.binary_erosion(mask[:, :, i])
        assert interior.sum() > 0 and np.all(image[interior] >= FILL - 1)


def test_load_image_gt_mini_masks_and_empty_images():
    config = make_config()
    _, _, class_ids, bbox, mini = load_image_gt(ShapesDataset(), config, 2, use_mini_mask=True)
    assert mini.shape == (14, 14, 2) and mini.dtype == bool and mini.all()  # rectangles fill their boxes
    assert bbox.tolist() == [[5, 5, 20, 20], [30, 40, 50, 60]]
    image, meta, class_ids, bbox, mask = load_image_gt(ShapesDataset(), config, 3, use_mini_mask=True)
    assert class_ids.shape == (0,) and bbox.shape == (0, 4) and mask.shape == (14, 14, 0)


def test_crop_mode_draws_its_crop_from_the_runs_generator():
    """IMAGE_RESIZE_MODE=crop: the crop follows the feed's seeded generator, not Python's
    global `random` (whose state it leaves alone)."""
    config = make_config(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64)
    dataset = ShapesDataset()
    dataset.image_info[2].update(height=100, width=120)  # larger than the 64x64 crop

    def crop_box(seed):
        _, meta, _, bbox, mask = load_image_gt(dataset, config, 2, use_mini_mask=False,
                                               rng=np.random.default_rng(seed))
        assert mask.shape[:2] == (64, 64)
        return bbox.tolist()

    state = random.getstate()
    first = [crop_box(seed) for seed in range(8)]
    assert random.getstate() == state
    random.seed(123)
    assert [crop_box(seed) for seed in range(8)] == first  # same seeds, same crops
    assert len({str(b) for b in first}) > 1  # the seed does move the crop


def test_load_image_gt_augments_before_boxes_and_drops_emptied_instances():
    config = make_config()
    shift = A.Compose([A.Affine(translate_px={"x": 30, "y": 0}, p=1.0)])
    image, _, class_ids, bbox, mask = load_image_gt(ShapesDataset(), config, 2, augmentation=shift)
    # The first rectangle moves right by 30 pixels; the second leaves the image.
    assert class_ids.tolist() == [1]
    assert bbox.tolist() == [[5, 35, 20, 50]]
    assert np.all(image[5:20, 35:50] == FILL) and np.all(image[30:50, 40:60] != FILL)
    assert mask.shape == (64, 64, 1) and mask[:, :, 0].sum() == 15 * 15


############################################################
#  MaskRCNNSequence
############################################################

def test_sequence_batch_shapes_dtypes_and_molding():
    config = make_config()
    dataset = ShapesDataset()
    seq = MaskRCNNSequence(dataset, config, shuffle=False, keep_empty=True)
    assert len(seq) == 3
    batch = seq[0]
    assert isinstance(batch, tuple) and len(batch) == 1  # inputs only, no targets
    inputs = batch[0]
    num_anchors = seq.anchors.shape[0]
    expected = [((2, 64, 64, 3), np.float32), ((2, config.IMAGE_META_SIZE), np.float32),
                ((2, num_anchors, 1), np.int32), ((2, 32, 4), np.float32), ((2, 4), np.int32),
                ((2, 4, 4), np.float32), ((2, 14, 14, 4), np.bool_)]
    assert [(x.shape, x.dtype) for x in inputs] == [(s, np.dtype(d)) for s, d in expected]
    images, metas, rpn_match, _, class_ids, boxes, _ = inputs
    for b in range(2):
        image_id = int(metas[b, 0])
        image, _, ids, bbox, _ = load_image_gt(dataset, config, image_id, use_mini_mask=True)
        np.testing.assert_allclose(images[b] + config.MEAN_PIXEL, image, atol=1e-3)
        assert class_ids[b, :len(ids)].tolist() == ids.tolist() and not class_ids[b, len(ids):].any()
        np.testing.assert_array_equal(boxes[b, :len(ids)], bbox)
    assert set(np.unique(rpn_match)) <= {-1, 0, 1}


def test_sequence_keeps_and_counts_empty_images_when_asked():
    config = make_config()
    seq = MaskRCNNSequence(ShapesDataset(), config, shuffle=True, keep_empty=True, seed=5)
    batches = all_batches(seq)
    class_ids = np.concatenate([b[4] for b in batches])
    rpn_match = np.concatenate([b[2] for b in batches])
    empty_rows = np.flatnonzero(~class_ids.any(axis=1))
    assert len(empty_rows) == 2 and seq.n_empty_served == 2  # images 0 and 3
    for row in empty_rows:
        assert np.sum(rpn_match[row] == 1) == 0
        assert np.sum(rpn_match[row] == -1) == config.RPN_TRAIN_ANCHORS_PER_IMAGE
    for row in np.flatnonzero(class_ids.any(axis=1)):
        assert np.sum(rpn_match[row] == 1) > 0


def test_sequence_drops_empty_images_by_default_like_matterport():
    config = make_config()
    assert config.KEEP_EMPTY_IMAGES is False
    seq = MaskRCNNSequence(ShapesDataset(), config, seed=5)
    batches = all_batches(seq)
    class_ids = np.concatenate([b[4] for b in batches])
    assert class_ids.any(axis=1).all()
    assert seq.n_empty_served == 0 and seq.n_empty_skipped >= 2


def test_sequence_is_deterministic_per_seed_and_epoch():
    config = make_config()
    make = lambda seed: MaskRCNNSequence(ShapesDataset(), config, augmentation=default_augmentation(),
                                         seed=seed, keep_empty=True)
    first, second, other = make(1), make(1), make(2)
    a, b, c = all_batches(first), all_batches(second), all_batches(other)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(x[0], z[0]) for x, z in zip(a, c))
    first.on_epoch_end()
    assert first.epoch == 1
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, all_batches(first)))
    # A copy sent to a worker process produces the same batches.
    clone = pickle.loads(pickle.dumps(second))
    np.testing.assert_array_equal(clone[1][0][0], b[1][0])


def test_sequence_with_thread_workers_matches_direct_indexing():
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    config = make_config()
    seq = MaskRCNNSequence(ShapesDataset(), config, shuffle=True, seed=3, keep_empty=True, workers=2)
    direct = all_batches(seq)
    adapter = PyDatasetAdapter(seq, shuffle=False)
    adapter.on_epoch_begin()
    served = [batch[0] for batch in adapter.get_numpy_iterator()]
    adapter.on_epoch_end()
    assert len(served) == len(direct)
    for x, y in zip(direct, served):
        np.testing.assert_array_equal(x[0], y[0])
        np.testing.assert_array_equal(x[4], y[4])


def test_sequence_replaces_images_that_fail_to_load(caplog):
    config = make_config()
    seq = MaskRCNNSequence(ShapesDataset(broken={2, 4}), config, shuffle=False, keep_empty=True)
    with caplog.at_level(logging.WARNING, logger="mrcnn.data.feed"):
        batches = all_batches(seq)
    metas = np.concatenate([b[1] for b in batches])
    assert not set(metas[:, 0].astype(int)) & {2, 4}
    assert seq.n_failed == 2 and seq.stats()["failed_ids"] == [2, 4]
    assert "synthetic/2.png" in caplog.text and "cannot read the mask" in caplog.text
    with pytest.raises(DataPipelineError, match="no usable training image"):
        MaskRCNNSequence(ShapesDataset(count=3, broken={0, 1, 2}), config)[0]


def test_sequence_truncates_to_max_gt_instances():
    config = make_config(MAX_GT_INSTANCES=1)
    seq = MaskRCNNSequence(ShapesDataset(), config, seed=0)
    class_ids = np.concatenate([b[4] for b in all_batches(seq)])
    assert class_ids.shape[1] == 1 and class_ids.all()
    assert seq.n_truncated == 6  # every served image had 2 instances


def test_sequence_checks_the_class_count():
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        MaskRCNNSequence(ShapesDataset(), make_config(NUM_CLASSES=2))


############################################################
#  Augmentation
############################################################

def blobs(shape=(64, 64), count=3, seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros(shape + (count,), bool)
    for i in range(count):
        y, x = rng.integers(4, shape[0] - 20), rng.integers(4, shape[1] - 20)
        masks[y:y + rng.integers(8, 16), x:x + rng.integers(8, 16), i] = True
    return masks


def test_default_augmentation_keeps_image_and_masks_aligned():
    masks = blobs()
    image = np.repeat((masks.any(axis=-1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    augmenter = default_augmentation()
    moved = 0
    for seed in range(12):
        out_image, out_masks = apply_augmentation(augmenter, image, masks, seed=seed)
        assert out_image.shape == image.shape and out_image.dtype == np.uint8
        assert out_masks.shape == masks.shape and out_masks.dtype == bool
        fg = out_image.mean(axis=-1) > 127
        union = out_masks.any(axis=-1)
        assert np.mean(fg == union) > 0.98
        moved += not np.array_equal(out_masks, masks)
    assert moved >= 6  # the geometry really changes


def test_augmentation_is_deterministic_for_a_seed_and_handles_no_instances():
    masks = blobs()
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    augmenter = default_augmentation()
    a = apply_augmentation(augmenter, image, masks, seed=7)
    b = apply_augmentation(augmenter, image, masks, seed=7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    empty = np.zeros((64, 64, 0), bool)
    out_image, out_masks = apply_augmentation(augmenter, image, empty, seed=7)
    assert out_image.shape == image.shape and out_masks.shape == (64, 64, 0)


def test_a_seeded_augmentation_is_the_same_on_a_reused_copy_and_in_other_threads():
    import copy
    import threading
    masks = blobs()
    image = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    augmenter = default_augmentation()

    def fresh(seed):  # what the result must be: a new copy of the pipeline seeded with `seed`
        aug = copy.deepcopy(augmenter)
        aug.set_random_seed(seed)
        out = aug(image=image, mask=masks.astype(np.uint8))
        return out["image"], out["mask"] > 0

    seeds = [3, 11, 3, 5, 11, 3]
    here = [apply_augmentation(augmenter, image, masks, seed=s) for s in seeds]
    there = {}
    worker = threading.Thread(target=lambda: there.update(
        {i: apply_augmentation(augmenter, image, masks, seed=s) for i, s in enumerate(reversed(seeds))}))
    worker.start()
    worker.join()
    for i, seed in enumerate(seeds):
        want_image, want_masks = fresh(seed)
        for got_image, got_masks in (here[i], there[len(seeds) - 1 - i]):
            np.testing.assert_array_equal(got_image, want_image)
            np.testing.assert_array_equal(got_masks, want_masks)
    assert not np.array_equal(here[0][0], here[1][0])  # the seeds do differ
    # a pipeline that is not the cached one (another object) is copied afresh
    other = default_augmentation(colour=False)
    np.testing.assert_array_equal(apply_augmentation(other, image, masks, seed=3)[0],
                                  apply_augmentation(copy.deepcopy(other), image, masks, seed=3)[0])
    # a lone transform is applied through a private copy: the caller's object is never reseeded
    lone = A.Affine(rotate=(-30, 30), p=1.0)
    state = lone.random_generator.bit_generator.state
    first = apply_augmentation(lone, image, masks, seed=9)[0]
    assert lone.random_generator.bit_generator.state == state
    np.testing.assert_array_equal(first, apply_augmentation(copy.deepcopy(lone), image, masks, seed=9)[0])


def test_augmentation_shape_rules():
    image = np.zeros((48, 64, 3), np.uint8)
    masks = blobs((48, 64))
    with pytest.raises(AugmentationError, match="keep shapes"):
        apply_augmentation(A.Compose([A.RandomRotate90(p=1.0)]), image, masks, seed=1)
    out_image, out_masks = apply_augmentation(default_augmentation(square=False), image, masks, seed=1)
    assert out_image.shape == image.shape and out_masks.shape == masks.shape
    with pytest.raises(ValueError, match="task"):
        default_augmentation(task="task9")
    with pytest.raises(AugmentationError, match="unsupported augmenter"):
        apply_augmentation(object(), image, masks)


class FakeAugmenter:
    """Duck-typed imgaug augmenter: a geometric one (named like imgaug's) or a colour one."""

    def __init__(self, name, fn, children=()):
        self.__class__ = type(name, (FakeAugmenter,), {})
        self.fn, self.children, self.seeded = fn, list(children), None

    def to_deterministic(self):
        return self

    def seed_(self, seed):
        self.seeded = seed

    def deepcopy(self):
        return FakeAugmenter(type(self).__name__, self.fn, self.children)

    def augment_image(self, image, hooks=None, parents=()):
        if hooks is not None and not hooks.activator(image, self, list(parents), True):
            return image
        image = self.fn(image)
        for child in self.children:
            image = child.augment_image(image, hooks, list(parents) + [self])
        return image


def fake_imgaug_pipeline():
    flip = FakeAugmenter("Fliplr", lambda im: im[:, ::-1])
    brighten = FakeAugmenter("Multiply", lambda im: im + 1)  # an image-only augmenter
    return FakeAugmenter("Sequential", lambda im: im, [flip, brighten])


def test_imgaug_style_augmenter_moves_masks_with_geometric_augmenters_only(monkeypatch):
    fake_imgaug = types.ModuleType("imgaug")
    fake_imgaug.HooksImages = lambda activator: types.SimpleNamespace(activator=activator)
    monkeypatch.setitem(sys.modules, "imgaug", fake_imgaug)
    masks = blobs()
    image = np.repeat((masks.any(axis=-1) * 100).astype(np.uint8)[..., None], 3, axis=-1)
    out_image, out_masks = apply_augmentation(fake_imgaug_pipeline(), image, masks, seed=3)
    np.testing.assert_array_equal(out_image, image[:, ::-1] + 1)
    assert out_masks.dtype == bool
    np.testing.assert_array_equal(out_masks, masks[:, ::-1])
    assert hasattr(np, "sctypes")  # the numpy-2 shim ran before the import


def test_imgaug_augmenter_without_imgaug_raises_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "imgaug", None)  # makes `import imgaug` fail
    with pytest.raises(ImgaugNotInstalledError, match="pip install --no-deps imgaug"):
        apply_augmentation(fake_imgaug_pipeline(), np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 1), bool))


def test_geometric_augmentation_never_changes_colours():
    """colour=False keeps pixel values: every output pixel is an input pixel value or the fill."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 200, 120, 90
    image[20:40, 20:40] = (90, 50, 30)
    masks = blobs()
    geometric = default_augmentation("task1", square=True, colour=False)
    coloured = default_augmentation("task1", square=True, colour=True)
    allowed = {(200, 120, 90), (90, 50, 30), (0, 0, 0)}
    changed = 0
    for seed in range(10):
        out, _ = apply_augmentation(geometric, image, masks, seed=seed)
        corners = {tuple(int(v) for v in out[y, x]) for y, x in ((0, 0), (63, 63), (30, 30), (5, 58))}
        assert corners <= allowed
        out_c, _ = apply_augmentation(coloured, image, masks, seed=seed)
        changed += not ({tuple(int(v) for v in out_c[y, x]) for y, x in ((0, 0), (30, 30))} <= allowed)
    assert changed >= 3  # the default pipeline does jitter colours
