"""isic.outputs.submission: official file names and formats, atomic writes, readers' checks."""
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from isic import layout
from isic.evaluation import submission_files
from isic.outputs import submission


def read_png(path):
    with Image.open(path) as image:
        return image.mode, np.array(image)


def test_task1_mask_is_single_channel_0_255_same_size(tmp_path):
    mask = np.zeros((37, 53), bool)
    mask[5:20, 10:40] = True
    path = submission.write_task1_mask(tmp_path, "ISIC_0012345", mask)
    assert path == tmp_path / "ISIC_0012345_segmentation.png"
    mode, array = read_png(path)
    assert mode == "L"
    assert array.shape == (37, 53) and array.dtype == np.uint8
    assert set(np.unique(array).tolist()) == {0, 255}
    assert np.array_equal(array == 255, mask)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]   # no temp file left


@pytest.mark.parametrize("values", [(0, 1), (0, 255), (0.0, 1.0)])
def test_task1_mask_accepts_binary_numeric(tmp_path, values):
    mask = np.full((8, 9), values[0], dtype=type(values[0]) if isinstance(values[0], float) else np.uint8)
    mask[2:4, 3:7] = values[1]
    _, array = read_png(submission.write_task1_mask(tmp_path, "ISIC_0000001.jpg", mask))
    assert array.sum() == 8 * 255 and array[2, 3] == 255


def test_mask_names_keep_non_isic_stems(tmp_path):
    assert submission.submission_stem("ISIC_0000007.jpg") == "ISIC_0000007"
    assert submission.submission_stem("/data/ISIC_0000007_downsampled.jpg") == "ISIC_0000007"
    assert submission.submission_stem("mole.jpg") == "mole"
    assert submission.submission_stem("mole") == "mole"
    path = submission.write_task1_mask(tmp_path, "mole.jpg", np.ones((4, 4), bool))
    assert path.name == "mole_segmentation.png"


def test_mask_rejects_non_binary_and_bad_shapes(tmp_path):
    with pytest.raises(submission.SubmissionError, match="threshold it first"):
        submission.write_task1_mask(tmp_path, "ISIC_0000001", np.array([[0, 128], [255, 0]], np.uint8))
    with pytest.raises(submission.SubmissionError, match="HxW"):
        submission.write_task1_mask(tmp_path, "ISIC_0000001", np.zeros((4, 4, 3), bool))
    assert list(tmp_path.iterdir()) == []


def test_failing_write_leaves_no_partial_file(tmp_path, monkeypatch):
    old = np.zeros((6, 6), bool)
    path = submission.write_task1_mask(tmp_path, "ISIC_0000002", old)
    before = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        submission.write_task1_mask(tmp_path, "ISIC_0000002", np.ones((6, 6), bool))
    with pytest.raises(OSError, match="disk full"):
        submission.write_task1_mask(tmp_path, "ISIC_0000003", np.ones((6, 6), bool))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert path.read_bytes() == before


def test_failing_csv_write_leaves_no_partial_file(tmp_path):
    rows = [("ISIC_0000001", [0.1] * 7), ("ISIC_0000002", [float("nan")] + [0.1] * 6)]
    with pytest.raises(submission.SubmissionError, match="NaN"):
        submission.write_task3_csv(tmp_path / "pred.csv", rows)
    assert list(tmp_path.iterdir()) == []


def test_task2_writes_all_five_attributes(tmp_path):
    streaks = np.zeros((12, 15), np.uint8)
    streaks[3:6, 4:9] = 255
    paths = submission.write_task2_masks(tmp_path, "ISIC_0000009.jpg", {"streaks": streaks})
    assert list(paths) == list(layout.ATTRIBUTES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"ISIC_0000009_attribute_{a}.png" for a in layout.ATTRIBUTES)
    for attribute, path in paths.items():
        mode, array = read_png(path)
        assert mode == "L" and array.shape == (12, 15)
        expected = streaks if attribute == "streaks" else np.zeros_like(streaks)
        assert np.array_equal(array, expected)
    empty = submission.write_task2_masks(tmp_path / "e", "ISIC_0000010", {}, shape=(5, 7))
    assert all(read_png(p)[1].shape == (5, 7) and not read_png(p)[1].any() for p in empty.values())


def test_task2_errors(tmp_path):
    with pytest.raises(submission.SubmissionError, match="unknown Task 2 attributes"):
        submission.write_task2_masks(tmp_path, "ISIC_0000001", {"dots": np.zeros((4, 4), bool)})
    with pytest.raises(submission.SubmissionError, match="share one HxW"):
        submission.write_task2_masks(tmp_path, "ISIC_0000001", {
            "streaks": np.zeros((4, 4), bool), "globules": np.zeros((4, 5), bool)})
    with pytest.raises(submission.SubmissionError, match="needs masks or shape"):
        submission.write_task2_masks(tmp_path, "ISIC_0000001", {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_task3_csv_header_rows_and_clipping(tmp_path):
    rows = [("ISIC_0024317.jpg", [1.2, -0.1, 0.5, 0, 1, 0.25, 1e-9]),
            ("mole.png", np.arange(7) / 10)]
    path = submission.write_task3_csv(tmp_path / "sub" / "pred.csv", rows)
    lines = path.read_text().splitlines()
    assert lines[0] == "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"
    assert len(lines) == 3
    assert lines[1].split(",")[0] == "ISIC_0024317" and lines[2].split(",")[0] == "mole"
    table = pd.read_csv(path).set_index("image")
    assert table.loc["ISIC_0024317"].tolist() == [1.0, 0.0, 0.5, 0.0, 1.0, 0.25, 1e-9]
    assert np.allclose(table.loc["mole"].to_numpy(), np.arange(7) / 10, atol=0, rtol=0)
    assert all(table[c].dtype == np.float64 for c in layout.DIAGNOSES)   # scorer needs floats
    assert [p.name for p in path.parent.iterdir()] == ["pred.csv"]
    # Our reader and the official scorer's parser both accept it.
    ours = submission_files.read_task3_csv(path)
    assert list(ours.columns) == list(layout.DIAGNOSES)
    scoring = pytest.importorskip("isic_challenge_scoring.load_csv")
    with path.open() as stream:
        theirs = scoring.parse_csv(stream, pd.Index(layout.DIAGNOSES))
    pd.testing.assert_frame_equal(ours, theirs, check_names=False)


def test_task3_csv_errors(tmp_path):
    with pytest.raises(submission.SubmissionError, match="expected 7"):
        submission.write_task3_csv(tmp_path / "a.csv", [("ISIC_0000001", [0.5] * 6)])
    with pytest.raises(submission.SubmissionError, match="twice"):
        submission.write_task3_csv(tmp_path / "a.csv", [("ISIC_0000001", [0.5] * 7),
                                                        ("ISIC_0000001.jpg", [0.5] * 7)])
    assert list(tmp_path.iterdir()) == []
    header = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n"
    for body, message in [
        ("ISIC_1,0.1,0.1,0.1,0.1,0.1,0.1,1.5\nISIC_2,0.1,0.1,0.1,0.1,0.1,0.1,0.1\n", "outside"),
        ("ISIC_1,0.1,0.1,0.1,0.1,0.1,0.1,\nISIC_2,0.1,0.1,0.1,0.1,0.1,0.1,0.1\n", "missing values"),
        ("ISIC_1.jpg,0.1,0.1,0.1,0.1,0.1,0.1,0.1\nISIC_1,0.1,0.1,0.1,0.1,0.1,0.1,0.1\n", "duplicate"),
    ]:
        with pytest.raises(submission.SubmissionError, match=message):
            submission_files.read_task3_csv(io.StringIO(header + body))
    with pytest.raises(submission.SubmissionError, match="lacks columns"):
        submission_files.read_task3_csv(io.StringIO("image,MEL\nISIC_1,0.1\nISIC_2,0.2\n"))


def test_read_mask_rules(tmp_path):
    Image.new("1", (5, 4), 1).save(tmp_path / "one_bit.png")
    mask = submission_files.read_mask(tmp_path / "one_bit.png")
    assert mask.shape == (4, 5) and mask.dtype == np.uint8 and (mask == 255).all()
    Image.new("RGB", (5, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(submission.SubmissionError, match="not single-channel"):
        submission_files.read_mask(tmp_path / "rgb.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(submission.SubmissionError, match="junk.png is not an image file"):
        submission_files.read_mask(tmp_path / "junk.png")
    with pytest.raises(submission.SubmissionError, match="does not exist"):
        submission_files.read_mask(tmp_path / "missing.png")
    good = tmp_path / "good.png"
    Image.new("L", (40, 30)).save(good)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:-30])
    with pytest.raises(submission.SubmissionError, match="truncated.png"):
        submission_files.read_mask(tmp_path / "truncated.png")


def test_match_mask_files_pairs_by_number_and_attribute(tmp_path):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    for image_id in ("ISIC_0000001", "ISIC_0000002"):
        submission.write_task2_masks(truth, image_id, {}, shape=(3, 3))
        submission.write_task2_masks(pred, image_id.replace("ISIC_", "pred_"), {}, shape=(3, 3))
    (truth / "ATTRIBUTION.txt").write_text("skipped")
    pairs = submission_files.match_mask_files(truth, pred)
    assert len(pairs) == 10
    for image_id, attribute, truth_path, pred_path in pairs:
        assert image_id[5:] in pred_path.stem and attribute in pred_path.stem
        assert truth_path.name == layout.attribute_name(image_id, attribute)
    with pytest.raises(submission.SubmissionError, match="does not exist"):
        submission_files.match_mask_files(tmp_path / "nope", pred)
