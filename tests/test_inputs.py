"""Reading input files: images of unusual depth, mode and size (isic/data/images.py), CSVs with a
byte-order mark, another encoding or invisible header characters (isic/data/csvfiles.py), and the
dataset warnings for ground truth that would be quietly misused."""
import logging
import pathlib
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from isic import layout
from isic.data import datasets
from isic.synthetic import generate_dataset


def oversize_png(path, side=13500):
    """A valid 1-bit PNG of side x side pixels (182 megapixels for 13500, over Pillow's
    178,956,970-pixel limit) written row by row: about 25 kB on disk, 0.2 s to make."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + one bit per pixel, all black
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    pathlib.Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
                                   + chunk(b"IEND", b""))
    return path


def sixteen_bit_png(path, values):
    """A single-channel 16-bit PNG (Pillow mode I;16) holding `values` [H, W] uint16."""
    Image.fromarray(np.asarray(values, np.uint16)).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs_isic")
    generate_dataset(root, count=4, task3_count=5, image_size=(64, 64), seed=3, progress=False)
    return root


def copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return pathlib.Path(dst)


def task3_csv(root):
    return root / layout.TASK3_GT_DIR.format(split="Training") / layout.TASK3_GT_CSV.format(split="Training")


def load(task, root):
    dataset = datasets.dataset_for_task(task)()
    dataset.load_isic(root, subset="all")
    dataset.prepare()
    return dataset


# --------------------------------------------------------------------------- 16-bit images

def test_sixteen_bit_images_in_a_dataset_are_scaled_not_white(tiny_data, tmp_path, caplog):
    """Issue 17 item 1: two different 16-bit images must not both come out white."""
    root = copy_dataset(tiny_data, tmp_path / "data")
    image_dir = root / layout.TASK12_INPUT_DIR.format(split="Training")
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))  # [64, 64]
    for isic_id, values in (("ISIC_0000000", ramp), ("ISIC_0000001", ramp // 4)):
        (image_dir / f"{isic_id}.jpg").unlink()
        sixteen_bit_png(image_dir / f"{isic_id}.png", values)
    with caplog.at_level(logging.INFO):
        dataset = load("segmentation", root)
        by_id = {info["id"]: i for i, info in enumerate(dataset.image_info)}
        bright = dataset.load_image(by_id["ISIC_0000000"])
        dim = dataset.load_image(by_id["ISIC_0000001"])
    assert bright.dtype == np.uint8 and bright.shape == (64, 64, 3)
    np.testing.assert_array_equal(bright[0, :, 0], np.round(ramp[0] / 257).astype(np.uint8))
    assert bright[..., 0].min() == 0 and bright[..., 0].max() == 255
    assert dim[..., 0].max() == 64  # a quarter of the range, not clipped to 255
    assert "scaled to 8 bits" in caplog.text and "ISIC_0000000.png" in caplog.text


def test_images_that_cannot_be_converted_are_bad_items(tmp_path):
    """Issue 17 item 1: a 32-bit float image has no defined 8-bit reading: a bad item."""
    path = tmp_path / "ISIC_0000005.tif"
    Image.fromarray(np.full((16, 16), 0.5, np.float32)).save(path)
    with pytest.raises(datasets._BadItem) as bad:
        datasets.check_image(path)
    assert bad.value.kind == "unsupported image mode" and "mode F" in str(bad.value)


def test_image_over_the_decompression_limit_is_a_bad_item(tmp_path):
    """Issue 16 Build 5: an image over Pillow's limit is named and skipped, not a crash."""
    path = oversize_png(tmp_path / "ISIC_0000007.png")
    with pytest.raises(datasets._BadItem) as bad:
        datasets.check_image(path)
    assert bad.value.kind == "image too large"
    assert "ISIC_0000007.png" in str(bad.value) and "178,956,970" in str(bad.value)


# --------------------------------------------------------------------------- CSV encodings

@pytest.mark.parametrize("which", ["task3", "ham10000"])
def test_csv_with_byte_order_mark_is_read(which, tiny_data, tmp_path):
    """Issue 17 item 4, issue 13 item 8: Excel's 'CSV UTF-8' starts with a BOM."""
    root = copy_dataset(tiny_data, tmp_path / "data")
    expected = load("classification", root).num_images
    if which == "task3":
        path = task3_csv(root)
    else:
        ids = sorted(p.stem for p in (root / layout.TASK3_INPUT_DIR.format(split="Training")).glob("*.jpg"))
        path = root / layout.HAM10000_METADATA_CSV
        lines = ["lesion_id,image_id,dx"] + [f"HAM_{n:07d},{i},nv" for n, i in enumerate(ids)]
        path.write_text("\n".join(lines) + "\n")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    dataset = load("classification", root)
    assert dataset.num_images == expected
    if which == "ham10000":
        assert len(dataset.metadata) == expected
        assert {m["lesion_id"] for m in dataset.metadata.values()} == {f"HAM_{n:07d}" for n in range(expected)}


def test_invisible_character_in_a_header_is_shown(tiny_data, tmp_path):
    """Issue 17 item 4: a zero-width space spoiling 'image' is shown escaped, not as 'image'."""
    root = copy_dataset(tiny_data, tmp_path / "data")
    path = task3_csv(root)
    path.write_text("image\u200b" + path.read_text()[len("image"):], encoding="utf-8")
    with pytest.raises(datasets.DatasetError) as error:
        load("classification", root)
    assert "'image\\u200b'" in str(error.value) and "invisible" in str(error.value)


# --------------------------------------------------------------------------- quiet acceptance

def test_mask_without_an_image_is_named(tiny_data, tmp_path, caplog):
    """Issue 17 item 6."""
    root = copy_dataset(tiny_data, tmp_path / "data")
    orphan = root / layout.TASK1_GT_DIR.format(split="Training") / layout.segmentation_name("ISIC_0099999")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(orphan)
    with caplog.at_level(logging.WARNING):
        dataset = load("segmentation", root)
    assert dataset.num_images == 4
    lines = [r.getMessage() for r in caplog.records if str(orphan) in r.getMessage()]
    assert len(lines) == 1 and "no image" in lines[0]


def test_all_black_task1_mask_is_named(tiny_data, tmp_path, caplog):
    """Issue 17 item 6: an empty Task 1 mask scores Jaccard 0 against any prediction."""
    root = copy_dataset(tiny_data, tmp_path / "data")
    mask = root / layout.TASK1_GT_DIR.format(split="Training") / layout.segmentation_name("ISIC_0000002")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(mask)
    with caplog.at_level(logging.WARNING):
        load("segmentation", root)
    lines = [r.getMessage() for r in caplog.records if str(mask) in r.getMessage()]
    assert len(lines) == 1 and "all black" in lines[0] and "Jaccard 0" in lines[0]


def test_conflicting_task3_duplicates_are_named(tiny_data, tmp_path, caplog):
    """Issue 17 item 6: a repeated id with another label names the file, lines and labels."""
    root = copy_dataset(tiny_data, tmp_path / "data")
    path = task3_csv(root)
    lines = path.read_text().splitlines()
    first = lines[1].split(",")
    hot = first[1:].index("1.0") if "1.0" in first[1:] else first[1:].index("1")
    other = (hot + 1) % len(layout.DIAGNOSES)
    repeat = [first[0]] + ["1.0" if k == other else "0.0" for k in range(len(layout.DIAGNOSES))]
    path.write_text("\n".join(lines + [",".join(repeat)]) + "\n")
    with caplog.at_level(logging.WARNING):
        dataset = load("classification", root)
    messages = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert len(messages) == 1, caplog.text
    assert first[0] in messages[0] and f"line {len(lines) + 1}" in messages[0] and "line 2" in messages[0]
    assert layout.DIAGNOSES[hot] in messages[0] and layout.DIAGNOSES[other] in messages[0]
    kept = next(info for info in dataset.image_info if info["id"] == first[0])
    assert kept["diagnosis"] == layout.DIAGNOSES[hot]  # the first row is kept, as the warning says


def test_prediction_and_truth_csvs_for_scoring_accept_a_bom_and_name_a_bad_line(tmp_path):
    """Issue 13 item 8 / issue 16 Build 4: the scoring readers (isic/outputs/submission.py) too."""
    from isic.evaluation import submission_files
    from isic.outputs import submission
    rows = ["image," + ",".join(layout.DIAGNOSES), "ISIC_0000001," + ",".join(["1.0"] + ["0.0"] * 6),
            "ISIC_0000002," + ",".join(["0.0", "1.0"] + ["0.0"] * 5)]
    path = tmp_path / "pred.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(rows) + "\n").encode())
    assert list(submission_files.read_task3_csv(path).index) == ["ISIC_0000001", "ISIC_0000002"]
    truth, _ = submission_files.read_task3_truth_csv(path)
    assert list(truth.index) == ["ISIC_0000001", "ISIC_0000002"]
    path.write_bytes(("\n".join(rows + ["ISIC_0000003_caf\xe9," + ",".join(["1.0"] + ["0.0"] * 6)])
                      + "\n").encode("latin-1"))
    for reader in (submission_files.read_task3_csv, submission_files.read_task3_truth_csv):
        with pytest.raises(submission.SubmissionError) as error:
            reader(path)
        assert f"{path} line 4" in str(error.value) and "not UTF-8" in str(error.value)


def test_training_and_scoring_read_the_task3_truth_through_one_reader(tiny_data, tmp_path, caplog):
    """Issue 25: the training loader and the scorer take the same rows from the same file; a
    repeated row is a warning for training and a refusal for scoring; weight columns of later
    ISIC releases are accepted by both."""
    from isic.evaluation import submission_files
    from isic.outputs import submission
    root = copy_dataset(tiny_data, tmp_path / "data")
    path = task3_csv(root)
    lines = path.read_text().splitlines()
    weighted = [lines[0] + ",score_weight"] + [f"{line},{0.5 + k}" for k, line in enumerate(lines[1:])]
    path.write_text("\n".join(weighted) + "\n")
    dataset = load("classification", root)
    truth, weights = submission_files.read_task3_truth_csv(path)
    trained = {info["id"]: info["diagnosis"] for info in dataset.image_info}
    assert trained and sorted(trained) == sorted(truth.index)
    assert all(truth.loc[i].idxmax() == diagnosis for i, diagnosis in trained.items())
    assert weights["score_weight"].tolist() == [0.5 + k for k in range(len(lines) - 1)]
    assert set(weights["validation_weight"]) == {1.0}

    path.write_text("\n".join(weighted + [weighted[1]]) + "\n")
    with caplog.at_level(logging.WARNING):
        again = load("classification", root)
    assert len(again.image_info) == len(dataset.image_info)
    assert any("repeats line 2" in r.getMessage() for r in caplog.records)
    first_id = weighted[1].split(",")[0]
    with pytest.raises(submission.SubmissionError, match=f"duplicate image rows: \\['{first_id}'\\]"):
        submission_files.read_task3_truth_csv(path)
