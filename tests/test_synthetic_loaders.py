"""The synthetic dataset passes the same loaders and validators as real ISIC data."""
import numpy as np
import pytest

from isic import layout
from isic.data.datasets import dataset_for_task
from isic.synthetic import generate_dataset


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, count=16, task3_count=14, image_size=(96, 128), seed=3, progress=False)
    return root


@pytest.mark.parametrize("task, expected", [("segmentation", 16), ("attributes", 16), ("classification", 14)])
def test_every_synthetic_image_loads_for_every_task(synthetic_root, task, expected):
    dataset = dataset_for_task(task)()
    dataset.load_isic(synthetic_root, subset="all")
    dataset.prepare()
    assert dataset.skipped == []
    assert dataset.num_images == expected
    assert dataset.class_names == ["BG"] + list(layout.CLASS_NAMES[task])
    if task == "classification":
        assert dataset.mask_fallback_ids == []  # the HAM10000-style masks are there
    for image_id in dataset.image_ids:
        image = dataset.load_image(image_id)
        masks, class_ids = dataset.load_mask(image_id)
        assert image.shape == (96, 128, 3) and image.dtype == np.uint8
        assert masks.shape[:2] == (96, 128) and masks.dtype == bool
        assert masks.shape[2] == len(class_ids)
        assert all(1 <= k < len(dataset.class_names) for k in class_ids)


def test_synthetic_splits_are_lesion_disjoint(synthetic_root):
    train = dataset_for_task("classification")()
    train.load_isic(synthetic_root, subset="train", seed=5)
    val = dataset_for_task("classification")()
    val.load_isic(synthetic_root, subset="val", seed=5)
    train_lesions = {info["lesion_id"] for info in train.image_info}
    val_lesions = {info["lesion_id"] for info in val.image_info}
    assert train_lesions and val_lesions
    assert not train_lesions & val_lesions
    assert len(train.image_info) + len(val.image_info) == 14
