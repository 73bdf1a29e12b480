"""Splits stratified by class (issue 24 item 5): every class with two or more images (lesions)
is on both sides, lesions stay whole, the split is a function of the seed, and Task 1 keeps the
unstratified split it always had."""
import collections
import csv
import shutil

import numpy as np
from PIL import Image

from isic import layout
from isic.data.datasets import (ISICAttributesDataset, ISICClassificationDataset, rarest_labels,
                                split_ids, stratified_split)
from isic.synthetic import diagnosis_counts

T3_IN, T3_GT, T3_CSV = "ISIC2018_Task3_Training_Input", "ISIC2018_Task3_Training_GroundTruth", \
    "ISIC2018_Task3_Training_GroundTruth.csv"


def imbalanced(total=205):
    """ids and labels in the synthetic Task 3 proportions (HAM10000's, at least 2 a class)."""
    ids, labels = [], []
    for dx, n in diagnosis_counts(total).items():
        for k in range(n):
            ids.append(f"{dx}_{k:03d}")
            labels.append(dx)
    order = np.random.default_rng(0).permutation(len(ids))
    return [ids[i] for i in order], [labels[i] for i in order]


def test_every_class_with_two_images_is_on_both_sides_for_every_seed():
    ids, labels = imbalanced()
    label_of = dict(zip(ids, labels))
    unstratified_misses = 0
    for seed in range(20):
        train, val = split_ids(ids, val_fraction=0.2, seed=seed, labels=labels)
        assert set(train).isdisjoint(val) and sorted(train + val) == sorted(ids)
        assert {label_of[i] for i in val} == set(layout.DIAGNOSES)
        assert {label_of[i] for i in train} == set(layout.DIAGNOSES)
        per_class = collections.Counter(label_of[i] for i in val)
        for dx, n in collections.Counter(labels).items():  # round(0.2 n), at least 1, at most n - 1
            assert per_class[dx] == min(max(int(np.floor(0.2 * n + 0.5)), 1), n - 1)
        unstratified_misses += {label_of[i] for i in split_ids(ids, val_fraction=0.2, seed=seed)[1]} \
            != set(layout.DIAGNOSES)
    assert unstratified_misses > 0  # what the stratification fixes: a plain split loses classes


def test_stratified_split_is_deterministic_and_moves_with_the_seed():
    ids, labels = imbalanced()
    first = split_ids(ids, val_fraction=0.2, seed=3, labels=labels)
    assert split_ids(ids, val_fraction=0.2, seed=3, labels=labels) == first
    assert split_ids(ids, val_fraction=0.2, seed=4, labels=labels)[1] != first[1]
    # the order of the ids does not change which ids are held out
    rev = split_ids(ids[::-1], val_fraction=0.2, seed=3, labels=labels[::-1])
    assert sorted(rev[1]) == sorted(first[1])


def test_lesions_stay_whole_and_a_lesion_counts_as_its_rarest_class():
    # 12 NV lesions of 2 images, 3 DF lesions of 2 images, one lesion with a DF and an NV image
    ids, groups, labels = [], [], []
    for k in range(12):
        ids += [f"nv{k}a", f"nv{k}b"]; groups += [f"L_nv{k}"] * 2; labels += ["NV", "NV"]  # noqa: E702
    for k in range(3):
        ids += [f"df{k}a", f"df{k}b"]; groups += [f"L_df{k}"] * 2; labels += ["DF", "DF"]  # noqa: E702
    ids += ["mixed_a", "mixed_b"]; groups += ["L_mixed"] * 2; labels += ["DF", "NV"]  # noqa: E702
    group_of = dict(zip(ids, groups))
    for seed in range(10):
        train, val = stratified_split(ids, groups, labels, 0.25, seed)
        assert {group_of[i] for i in train}.isdisjoint({group_of[i] for i in val})
        val_groups = {group_of[i] for i in val}
        # DF has 4 lesions (the mixed one included): round(0.25 * 4) = 1; NV 12: 3
        assert len({g for g in val_groups if "df" in g or g == "L_mixed"}) == 1
        assert len({g for g in val_groups if "nv" in g}) == 3


def test_single_image_classes_stay_in_training_and_val_is_never_empty():
    train, val = split_ids(["a", "b", "c", "d"], val_fraction=0.5, seed=0, labels=["X", "X", "Y", None])
    assert "c" in train and "d" in train and len([i for i in val if i in "ab"]) == 1
    train, val = split_ids(["a", "b"], val_fraction=0.2, seed=0, labels=["X", "Y"])
    assert len(train) == 1 and len(val) == 1
    assert split_ids(["a", "b"], val_fraction=0.0, labels=["X", "X"]) == (["a", "b"], [])


def test_rarest_labels():
    assert rarest_labels([("a", "b"), ("a",), ("a", "c", "b"), ()]) == ["b", "a", "c", None]


def test_task3_loader_stratifies_and_records_class_counts(isic_sample, tmp_path):
    """18 real Task 3 images relabelled 12 NV / 4 DF / 2 VASC: for every seed both sides hold
    every class, and split_class_counts says so."""
    (tmp_path / T3_GT).mkdir()
    (tmp_path / T3_IN).symlink_to(isic_sample / T3_IN)
    images = sorted(p.stem for p in (isic_sample / T3_IN).glob("*.jpg"))
    names = ["NV"] * 12 + ["DF"] * 4 + ["VASC"] * 2
    with open(tmp_path / T3_GT / T3_CSV, "w", newline="") as f:
        rows = [["image", *layout.DIAGNOSES]]
        rows += [[i] + ["1.0" if d == dx else "0.0" for d in layout.DIAGNOSES] for i, dx in zip(images, names)]
        csv.writer(f).writerows(rows)
    for seed in range(4):
        val = ISICClassificationDataset()
        val.load_isic(tmp_path, subset="val", seed=seed)
        assert collections.Counter(info["diagnosis"] for info in val.image_info) == {"NV": 2, "DF": 1, "VASC": 1}
        assert val.split_class_counts == {"train": {"DF": 3, "NV": 10, "VASC": 1},
                                          "val": {"DF": 1, "NV": 2, "VASC": 1}}
        assert val.split_stratified


def test_task2_loader_stratifies_by_the_rarest_attribute(isic_sample, tmp_path):
    """The six real Task 2 images, two of them given a (copied) streaks mask: one of the two is
    held out for every seed, though the split holds out only one image in five."""
    t12, t2 = "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task2_Training_GroundTruth_v3"
    (tmp_path / t12).symlink_to(isic_sample / t12)
    shutil.copytree(isic_sample / t2, tmp_path / t2)
    with_pn = sorted(p.name.split("_attribute")[0] for p in (tmp_path / t2).glob("*pigment_network.png")
                     if np.asarray(Image.open(p)).any())
    streaky = with_pn[:2]
    for isic_id in streaky:
        shutil.copy(tmp_path / t2 / f"{isic_id}_attribute_pigment_network.png",
                    tmp_path / t2 / f"{isic_id}_attribute_streaks.png")
    for seed in range(4):
        ds = ISICAttributesDataset()
        ds.load_isic(tmp_path, subset="val", seed=seed)
        assert sum(i in ds.split_val_ids for i in streaky) == 1
        assert ds.split_class_counts["val"]["streaks"] == 1
        assert ds.split_class_counts["train"]["streaks"] == 1
