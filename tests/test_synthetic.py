"""The synthetic ISIC 2018 dataset: determinism, official formats, mask geometry, caching."""
import csv
import hashlib
import json
import pathlib
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from isic import layout, synthetic

SIZE = (72, 96)  # (H, W): not square, so a swapped axis shows
COUNT, TASK3_COUNT, SEED = 16, 20, 3


def _generate(root, seed=SEED):
    return synthetic.generate_dataset(root, count=COUNT, image_size=SIZE, seed=seed,
                                      task3_count=TASK3_COUNT, progress=False)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(pathlib.Path(root).rglob("*")) if p.is_file()}


def _gray(path):
    image = Image.open(path)
    return image.mode, np.asarray(image)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "a"
    summary = _generate(root)
    return root, summary


@pytest.fixture(scope="module")
def files(dataset):
    return _files(dataset[0])


def _task12_ids():
    return [f"ISIC_{i:07d}" for i in range(COUNT)]


def _task3_ids():
    return [f"ISIC_{24306 + i:07d}" for i in range(TASK3_COUNT)]


def _read_csv(root, relpath):
    with open(root / relpath, newline="") as f:
        return list(csv.reader(f))


# -- determinism -----------------------------------------------------------------------------

def test_same_seed_gives_byte_identical_files(dataset, files, tmp_path):
    _generate(tmp_path / "b")
    again = _files(tmp_path / "b")
    assert sorted(again) == sorted(files)
    differing = [name for name in files if files[name] != again[name]]
    assert differing == []


def test_other_seed_gives_other_images(files, tmp_path):
    _generate(tmp_path / "c", seed=SEED + 1)
    other = _files(tmp_path / "c")
    images = [name for name in files if name.endswith(".jpg")]
    assert len(images) == COUNT + TASK3_COUNT
    assert all(other[name] != files[name] for name in images)


def test_render_sample_is_deterministic_per_generator_state():
    a = synthetic.render_sample(np.random.default_rng(11), 64)
    b = synthetic.render_sample(np.random.default_rng(11), 64)
    c = synthetic.render_sample(np.random.default_rng(12), 64)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[3] == b[3]
    assert all(np.array_equal(a[2][k], b[2][k]) for k in layout.ATTRIBUTES)
    assert not np.array_equal(a[0], c[0])


# -- layout and formats ----------------------------------------------------------------------

def test_layout_has_exactly_the_official_files(files):
    split = "Training"
    expected = {synthetic.MANIFEST_NAME, "HAM10000_metadata.csv",
                f"ISIC2018_Task3_{split}_GroundTruth/ISIC2018_Task3_{split}_GroundTruth.csv"}
    for image_id in _task12_ids():
        expected.add(f"ISIC2018_Task1-2_{split}_Input/{image_id}.jpg")
        expected.add(f"ISIC2018_Task1_{split}_GroundTruth/{image_id}_segmentation.png")
        for name in ("pigment_network", "negative_network", "streaks", "milia_like_cyst",
                     "globules"):
            expected.add(f"ISIC2018_Task2_{split}_GroundTruth_v3/{image_id}_attribute_{name}.png")
    for image_id in _task3_ids():
        expected.add(f"ISIC2018_Task3_{split}_Input/{image_id}.jpg")
        expected.add(f"HAM10000_segmentations_lesion_tschandl/{image_id}_segmentation.png")
    assert set(files) == expected  # also: no temporary file left behind


def test_images_are_rgb_jpegs_and_masks_are_binary_grayscale_pngs(dataset, files):
    root = dataset[0]
    h, w = SIZE
    for name, data in files.items():
        if name.endswith(".jpg"):
            assert data[:3] == b"\xff\xd8\xff", name
            image = Image.open(root / name)
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (w, h)), name
        elif name.endswith(".png"):
            assert data[:8] == b"\x89PNG\r\n\x1a\n", name
            mode, mask = _gray(root / name)
            assert mode == "L" and mask.dtype == np.uint8 and mask.shape == (h, w), name
            assert set(np.unique(mask)) <= {0, 255}, name


def test_manifest_lists_every_file_with_its_hash(dataset, files):
    manifest = json.loads(files[synthetic.MANIFEST_NAME])
    listed = manifest["files"]
    assert set(listed) == set(files) - {synthetic.MANIFEST_NAME}
    for name, info in listed.items():
        assert info["bytes"] == len(files[name])
        assert info["sha256"] == hashlib.sha256(files[name]).hexdigest()
    assert manifest["count"] == COUNT and manifest["image_size"] == list(SIZE)


def test_task3_csv_is_one_hot_with_the_official_header(dataset):
    root = dataset[0]
    rows = _read_csv(root, "ISIC2018_Task3_Training_GroundTruth/"
                           "ISIC2018_Task3_Training_GroundTruth.csv")
    assert rows[0] == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert [r[0] for r in rows[1:]] == _task3_ids()
    for row in rows[1:]:
        assert sorted(row[1:]) == ["0.0"] * 6 + ["1.0"], row
    per_class = np.array([[float(v) for v in r[1:]] for r in rows[1:]]).sum(0)
    assert per_class.min() >= 1  # every class present (20 >= 14 images)
    assert per_class.argmax() == 1  # NV dominates, as in HAM10000


def test_metadata_matches_csv_and_has_multi_image_lesions(dataset):
    root = dataset[0]
    meta = _read_csv(root, "HAM10000_metadata.csv")
    assert meta[0] == ["lesion_id", "image_id", "dx"]
    rows = _read_csv(root, "ISIC2018_Task3_Training_GroundTruth/"
                           "ISIC2018_Task3_Training_GroundTruth.csv")
    label = {r[0]: rows[0][1 + r[1:].index("1.0")].lower() for r in rows[1:]}
    assert sorted(m[1] for m in meta[1:]) == sorted(label)
    lesions = defaultdict(list)
    for lesion_id, image_id, dx in meta[1:]:
        assert dx == label[image_id]
        assert lesion_id.startswith("HAM_") and len(lesion_id) == 11
        lesions[lesion_id].append(image_id)
    assert max(len(v) for v in lesions.values()) >= 2
    assert len(lesions) < TASK3_COUNT
    for images in lesions.values():  # two photographs of one lesion show a similar lesion
        if len(images) == 2:
            areas = [(_gray(root / layout.HAM10000_MASK_DIR / f"{i}_segmentation.png")[1] > 0)
                     .sum() for i in images]
            assert 0.6 < areas[0] / areas[1] < 1.7


# -- mask geometry ---------------------------------------------------------------------------

def _task12_masks(root, image_id):
    lesion = _gray(root / "ISIC2018_Task1_Training_GroundTruth" /
                   f"{image_id}_segmentation.png")[1] > 0
    attributes = {name: _gray(root / "ISIC2018_Task2_Training_GroundTruth_v3" /
                              f"{image_id}_attribute_{name}.png")[1] > 0
                  for name in layout.ATTRIBUTES}
    return lesion, attributes


def test_lesion_masks_are_neither_empty_nor_the_whole_image(dataset):
    root = dataset[0]
    paths = sorted((root / "ISIC2018_Task1_Training_GroundTruth").glob("*.png"))
    paths += sorted((root / "HAM10000_segmentations_lesion_tschandl").glob("*.png"))
    assert len(paths) == COUNT + TASK3_COUNT
    for path in paths:
        area = (_gray(path)[1] > 0).mean()
        assert 0.005 < area < 0.9, path.name


def test_attribute_masks_lie_inside_the_lesion(dataset):
    root, summary = dataset
    seen = Counter()
    per_image = []
    for image_id in _task12_ids():
        lesion, attributes = _task12_masks(root, image_id)
        present = [name for name, mask in attributes.items() if mask.any()]
        per_image.append(len(present))
        for name in present:
            mask = attributes[name]
            assert (mask & lesion).sum() >= 0.99 * mask.sum(), (image_id, name)
            seen[name] += 1
    assert min(per_image) == 0  # images without any attribute exist (negatives)
    assert max(per_image) >= 2  # and images with several
    assert summary["attribute_counts"] == {name: seen[name] for name in layout.ATTRIBUTES}
    assert summary["images_without_attributes"] == per_image.count(0)


def test_render_sample_draws_exactly_the_requested_attributes():
    rng = np.random.default_rng(5)
    for dx in layout.DIAGNOSES:
        image, lesion, masks, diagnosis = synthetic.render_sample(
            rng, (80, 64), diagnosis=dx, attributes=layout.ATTRIBUTES)
        assert diagnosis == dx
        assert image.shape == (80, 64, 3) and image.dtype == np.uint8
        assert lesion.shape == (80, 64) and set(np.unique(lesion)) == {0, 255}
        for name in layout.ATTRIBUTES:
            assert masks[name].any(), (dx, name)
            assert not (masks[name] & ~lesion).any(), (dx, name)
    _, _, masks, _ = synthetic.render_sample(rng, 64, diagnosis="MEL", attributes=())
    assert sorted(masks) == sorted(layout.ATTRIBUTES)
    assert not any(m.any() for m in masks.values())


def test_structures_change_the_pixels_inside_their_masks():
    # Same lesion and photograph with and without one structure: pixels differ inside its mask.
    for name in layout.ATTRIBUTES:
        with_it = synthetic.render_sample(np.random.default_rng(8), 96, "NV", [name])
        without = synthetic.render_sample(np.random.default_rng(8), 96, "NV", [])
        mask = with_it[2][name] > 0
        diff = np.abs(with_it[0].astype(int) - without[0].astype(int)).sum(-1)
        assert diff[mask].mean() > 10, name


def test_diagnoses_are_told_apart_by_lesion_colour():
    # A nearest-centroid classifier on the mean lesion colour must beat chance (1/7) by far.
    def features(seed, dx):
        image, lesion, _, _ = synthetic.render_sample(np.random.default_rng(seed), 64, dx)
        inside = image[lesion > 0].astype(float)
        return np.concatenate([inside.mean(0), inside.std(0), [(lesion > 0).mean() * 255]])

    train = {dx: np.mean([features(s, dx) for s in range(6)], 0) for dx in layout.DIAGNOSES}
    correct = 0
    for dx in layout.DIAGNOSES:
        for s in range(100, 106):
            f = features(s, dx)
            guess = min(train, key=lambda c: np.linalg.norm(train[c] - f))
            correct += guess == dx
    assert correct / (6 * len(layout.DIAGNOSES)) > 0.5


# -- class balance ---------------------------------------------------------------------------

def test_diagnosis_counts_by_hand():
    # 200 images: 2 per class, then 186 by HAM10000 proportions (largest remainder):
    # quotas MEL 20.67 NV 124.53 BCC 9.55 AKIEC 6.07 BKL 20.41 DF 2.14 VASC 2.64;
    # floors sum to 183, the 3 left go to MEL (.67), VASC (.64), BCC (.55).
    assert synthetic.diagnosis_counts(200) == {"MEL": 23, "NV": 126, "BCC": 12, "AKIEC": 8,
                                               "BKL": 22, "DF": 4, "VASC": 5}
    assert set(synthetic.diagnosis_counts(14).values()) == {2}
    assert set(synthetic.diagnosis_counts(7).values()) == {1}
    for n in (0, 1, 6, 13, 14, 15, 57, 1000):
        counts = synthetic.diagnosis_counts(n)
        assert sum(counts.values()) == n
        if n >= 14:
            assert min(counts.values()) >= 2


# -- caching ---------------------------------------------------------------------------------

def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in pathlib.Path(root).rglob("*") if p.is_file()}


def test_ensure_reuses_a_complete_folder(tmp_path, monkeypatch):
    kwargs = dict(cache_dir=tmp_path, count=3, image_size=48, seed=2, task3_count=2,
                  progress=False)
    root = synthetic.ensure_synthetic_dataset(**kwargs)
    assert root.parent == tmp_path and "n3" in root.name and "48x48" in root.name
    before = _mtimes(root)

    def no_generation(*args, **kw):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(synthetic, "generate_dataset", no_generation)
    assert synthetic.ensure_synthetic_dataset(**kwargs) == root
    assert _mtimes(root) == before
    other = synthetic.dataset_folder_name(3, 48, 5, 2)
    assert other != root.name  # another seed, another folder


def test_ensure_regenerates_an_incomplete_folder(tmp_path):
    kwargs = dict(cache_dir=tmp_path, count=3, image_size=48, seed=2, task3_count=2,
                  progress=False)
    root = synthetic.ensure_synthetic_dataset(**kwargs)
    original = _files(root)
    missing = root / "ISIC2018_Task2_Training_GroundTruth_v3" / \
        "ISIC_0000001_attribute_globules.png"
    missing.unlink()
    (root / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000002.jpg").write_bytes(b"trunc")
    assert synthetic.ensure_synthetic_dataset(**kwargs) == root
    assert _files(root) == original
    (root / synthetic.MANIFEST_NAME).unlink()  # interrupted before the marker was written
    assert synthetic.ensure_synthetic_dataset(**kwargs) == root
    assert _files(root) == original


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(synthetic.CACHE_ENV, str(tmp_path / "here"))
    assert synthetic.default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv(synthetic.CACHE_ENV)
    assert synthetic.default_cache_dir() == \
        pathlib.Path.home() / ".cache" / "isic-mrcnn" / "synthetic"


# -- bad input and the command line ----------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(count=0), "count"),
    (dict(count=2, seed=-1), "seed"),
    (dict(count=2, image_size=(16, 64)), "at least"),
    (dict(count=2, task3_count=-3), "task3_count"),
])
def test_bad_parameters_raise_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.generate_dataset(tmp_path / "x", progress=False, **kwargs)


def test_render_sample_rejects_unknown_names():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="diagnosis"):
        synthetic.render_sample(rng, 64, diagnosis="melanoma")
    with pytest.raises(ValueError, match="attribute"):
        synthetic.render_sample(rng, 64, attributes=["dots"])


def test_cli_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "cli"
    assert synthetic.main([str(out), "--count", "2", "--task3-count", "1", "--size", "40x56",
                           "--seed", "1", "--quiet"]) == 0
    assert str(out) in capsys.readouterr().out
    image = Image.open(out / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000001.jpg")
    assert image.size == (56, 40)
    assert synthetic.main([str(tmp_path / "bad"), "--count", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
