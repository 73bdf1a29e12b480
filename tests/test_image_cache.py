"""The decoded-image cache of the training feed (mrcnn/data/image_cache.py): later epochs and runs
read it instead of decoding, a changed source file or IMAGE_MAX_DIM gets a new entry, a
damaged entry is rebuilt, and cached batches equal uncached ones."""
import concurrent.futures
import logging
import os

import numpy as np
import pytest
from PIL import Image

from isic import synthetic
from isic.data.datasets import ISICSegmentationDataset
from mrcnn.data import feed as data
from mrcnn.data import image_cache, resize
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory):
    """4 synthetic Task 1 images of 96x144: IMAGE_MAX_DIM 64 shrinks them (by 2.25)."""
    root = tmp_path_factory.mktemp("cache_sources")
    synthetic.generate_dataset(root, count=4, image_size=(96, 144), seed=3, task3_count=0, progress=False)
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "image-cache"
    monkeypatch.setenv(image_cache.CACHE_ENV_VAR, str(folder))
    return folder


class CountingDataset(ISICSegmentationDataset):
    """Task 1 dataset that counts image decodes and mask reads."""

    def __init__(self):
        super().__init__()
        self.decodes = 0
        self.mask_reads = 0

    def load_image(self, image_id):
        self.decodes += 1
        return super().load_image(image_id)

    def load_mask(self, image_id):
        self.mask_reads += 1
        return super().load_mask(image_id)


def load(folder):
    dataset = CountingDataset()
    dataset.load_isic(folder, subset="all")
    dataset.prepare()
    return dataset


def config(**overrides):
    """The tests' tiny network (tests.helpers.tiny_config)."""
    return tiny_config(**{"NAME": "cache", **overrides})


def gt(dataset, cfg, image_id):
    return data.load_image_gt(dataset, cfg, image_id, use_mini_mask=False)


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y)


def test_second_epoch_and_next_run_read_the_cache(source_folder, cache):
    dataset = load(source_folder)
    feed = data.MaskRCNNSequence(dataset, config(), shuffle=False)
    first = [feed[i][0] for i in range(len(feed))]
    assert dataset.decodes == dataset.num_images == 4
    assert dataset.mask_reads == 4
    assert len(list(cache.glob("*.npz"))) == 4
    feed.on_epoch_end()
    second = [feed[i][0] for i in range(len(feed))]
    assert dataset.decodes == 4 and dataset.mask_reads == 4  # nothing decoded in epoch 2
    for a, b in zip(first, second):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[6], b[6])  # images, gt masks

    rerun = load(source_folder)  # a later run: new dataset object, same files
    for image_id in rerun.image_ids:
        gt(rerun, config(), image_id)
    assert rerun.decodes == 0 and rerun.mask_reads == 0


def test_cached_equals_uncached_and_shrinks_by_area(source_folder, cache):
    dataset = load(source_folder)
    on, off = config(), config(IMAGE_CACHE=False)
    for image_id in dataset.image_ids:
        uncached = gt(dataset, off, image_id)
        built = gt(dataset, on, image_id)  # builds and writes the entry
        read = gt(dataset, on, image_id)  # reads it
        assert_same(uncached, built)
        assert_same(uncached, read)
        # The image was shrunk 144 -> 64 (scale 64/144) and centred in the 64x64 square.
        image, meta = read[0], read[1]
        assert image.shape == (64, 64, 3)
        assert meta[1:4].tolist() == [96, 144, 3] and meta[11] == pytest.approx(64 / 144)
    assert dataset.decodes == 2 * dataset.num_images  # the uncached path and the first cached call
    assert len(list(cache.glob("*.npz"))) == dataset.num_images
    assert not list(cache.glob(".tmp-*"))


def test_training_resize_averages_instead_of_aliasing():
    checker = ((np.indices((96, 96)).sum(axis=0) % 2) * 255).astype(np.uint8)
    image = np.repeat(checker[..., None], 3, axis=-1)
    mask = np.zeros((96, 96, 1), bool)
    mask[:48, :, 0] = True  # top half
    small, _, _, padding, _ = resize.resize_image(image, max_dim=32, mode="square", method="area")
    small_mask = resize.resize_mask(mask, 1 / 3, padding)
    assert small.shape == (32, 32, 3) and small_mask.shape == (32, 32, 1)
    # Each output pixel averages 3x3 input pixels: 4/9 or 5/9 of 255, never 0 or 255.
    assert set(np.unique(small)) <= {113, 142}
    assert small_mask[:16, :, 0].all() and not small_mask[16:, :, 0].any()


def test_changed_source_file_or_image_max_dim_gets_a_new_entry(source_folder, tmp_path, cache):
    folder = tmp_path / "copy"
    folder.mkdir()
    os.system(f"cp -r {source_folder}/. {folder}")
    dataset = load(folder)
    cfg = config()
    before = [gt(dataset, cfg, i) for i in dataset.image_ids]
    assert dataset.decodes == 4

    path = dataset.image_info[0]["path"]
    with Image.open(path) as im:
        inverted = Image.fromarray(255 - np.asarray(im.convert("RGB")))
    inverted.save(path, quality=95)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    after = [gt(dataset, cfg, i) for i in dataset.image_ids]
    assert dataset.decodes == 5  # only the replaced image was decoded again
    assert not np.array_equal(after[0][0], before[0][0])
    assert_same(after[0], gt(dataset, config(IMAGE_CACHE=False), 0))  # the entry holds the new file
    for i in (1, 2, 3):
        assert_same(after[i], before[i])
    assert len(list(cache.glob("*.npz"))) == 4  # the stale entry was overwritten

    bigger = config(IMAGE_MAX_DIM=128)
    item = gt(dataset, bigger, 1)
    assert item[0].shape == (128, 128, 3)
    assert dataset.decodes == 7  # one for the comparison above, one for the new size
    assert len(list(cache.glob("*.npz"))) == 5  # both sizes keep their entries
    gt(dataset, cfg, 1)
    assert dataset.decodes == 7


def test_truncated_or_garbled_entry_is_rebuilt(source_folder, cache, caplog):
    dataset = load(source_folder)
    cfg = config()
    reference = gt(dataset, cfg, 2)
    (entry,) = cache.glob("*.npz")
    raw = entry.read_bytes()
    entry.write_bytes(raw[:len(raw) // 2])
    with caplog.at_level(logging.WARNING, logger="mrcnn.data.image_cache"):
        rebuilt = gt(dataset, cfg, 2)
    assert dataset.decodes == 2
    assert_same(rebuilt, reference)
    assert "rebuilding unreadable" in caplog.text
    assert entry.read_bytes() == raw  # written again, whole

    garbled = bytearray(raw)
    garbled[len(raw) // 2] ^= 0xFF  # one flipped byte inside the stored image
    entry.write_bytes(bytes(garbled))
    assert_same(gt(dataset, cfg, 2), reference)
    assert dataset.decodes == 3
    gt(dataset, cfg, 2)
    assert dataset.decodes == 3  # the rebuilt entry is read again


def test_no_entries_when_off_in_crop_mode_or_without_named_sources(source_folder, cache):
    dataset = load(source_folder)
    gt(dataset, config(IMAGE_CACHE=False), 0)
    gt(dataset, config(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=64), 0)

    class Unnamed(CountingDataset):
        image_cache_sources = None

    unnamed = Unnamed()
    unnamed.load_isic(source_folder, subset="all")
    unnamed.prepare()
    gt(unnamed, config(), 0)
    gt(unnamed, config(), 0)
    assert unnamed.decodes == 2
    assert not cache.exists() or not list(cache.iterdir())


def test_concurrent_builds_of_one_entry_leave_one_valid_file(source_folder, cache):
    dataset = load(source_folder)
    cfg = config()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: gt(dataset, cfg, 1), range(8)))
    for item in results[1:]:
        assert_same(item, results[0])
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    name, key = image_cache.entry_key(dataset, cfg, 1)
    assert files[0].name == name
    assert np.array_equal(image_cache.read_entry(files[0], key).image, results[0][0])
