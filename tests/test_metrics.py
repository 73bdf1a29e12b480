"""isic.evaluation.metrics against the official scorer (isic-challenge-scoring 5.6.0, the test oracle).

Predictions are written through isic.outputs.submission into tmp folders, then scored by both.
mAP cases and the helpers are hand-computed: they run whether or not the scorer is installed;
only the comparisons with it (the `official_scorer` fixture) skip without it.
"""
import io
import json
import os
import pathlib

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from isic import layout
from isic.evaluation import metrics
from isic.outputs import submission

try:  # the oracle: only the comparisons with it need it (requirements-dev.txt installs it)
    from isic_challenge_scoring import ClassificationMetric, ClassificationScore, SegmentationScore
    from isic_challenge_scoring import task2 as scorer_task2
    from isic_challenge_scoring.load_image import iter_image_pairs
    SCORER_MISSING = None
except ImportError as e:
    SCORER_MISSING = str(e)


@pytest.fixture
def official_scorer():
    """Skips a comparison with the official scorer when it is not installed (fails in CI)."""
    if SCORER_MISSING:
        if os.environ.get("CI"):
            pytest.fail(f"the official scorer is not importable in CI: {SCORER_MISSING}")
        pytest.skip(f"isic-challenge-scoring is not installed ({SCORER_MISSING})")

TOL = 1e-6
TASK1_GT = "ISIC2018_Task1_Training_GroundTruth"
TASK2_GT = "ISIC2018_Task2_Training_GroundTruth_v3"
TASK3_CSV = "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv"


def read_png(path):
    return np.array(Image.open(path))


def assert_plain(value):
    """Only built-in types, so json.dump writes metrics.json without numpy scalars."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str, key
            assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain(item)
    else:
        assert type(value) in (float, int, str, bool), (value, type(value))
    json.dumps(value)


def assert_close(ours, theirs, what):
    if np.isnan(theirs):
        assert np.isnan(ours), f"{what}: ours {ours}, scorer NaN"
    else:
        assert abs(ours - theirs) <= TOL, f"{what}: ours {ours}, scorer {theirs}"


def assert_task1_matches_scorer(ours, truth_dir, pred_dir):
    theirs = SegmentationScore.from_dir(pathlib.Path(truth_dir), pathlib.Path(pred_dir))
    assert_close(ours["overall"], theirs.overall, "overall")
    assert_close(ours["validation"], theirs.validation, "validation")
    for key in metrics.TASK1_RECORD_KEYS:
        assert_close(ours["macro_average"][key], theirs.macro_average[key], f"macro {key}")
    # Per image: the scorer's macro average over a single image pair is that image's value.
    pairs = list(iter_image_pairs(pathlib.Path(truth_dir), pathlib.Path(pred_dir)))
    assert sorted(ours["per_image"]) == sorted(p.image_id for p in pairs)
    for pair in pairs:
        single = SegmentationScore([pair]).macro_average
        for key in metrics.TASK1_RECORD_KEYS:
            assert_close(ours["per_image"][pair.image_id][key], single[key], f"{pair.image_id} {key}")


# --------------------------------------------------------------------------- Task 1

@pytest.fixture(scope="module")
def task1_truth(isic_sample):
    truth_dir = isic_sample / TASK1_GT
    masks = {layout.isic_id(p.name): read_png(p) for p in sorted(truth_dir.glob("*.png"))}
    assert len(masks) == 6
    return truth_dir, masks


def perturb(mask, how):
    on = mask > 128
    kernel = np.ones((41, 41), np.uint8)
    if how == "exact":
        return on
    if how == "shifted":
        return np.roll(on, (60, -90), axis=(0, 1))
    if how == "eroded":
        return cv2.erode(on.astype(np.uint8), kernel).astype(bool)
    if how == "dilated":
        return cv2.dilate(on.astype(np.uint8), kernel).astype(bool)
    if how == "empty":
        return np.zeros_like(on)
    if how == "all_on":
        return np.ones_like(on)
    raise AssertionError(how)


PERTURBATIONS = ("exact", "shifted", "eroded", "dilated", "empty", "all_on")


def test_task1_real_sample_matches_scorer(official_scorer, task1_truth, tmp_path):
    truth_dir, masks = task1_truth
    preds = {}
    for (image_id, mask), how in zip(sorted(masks.items()), PERTURBATIONS):
        preds[image_id] = perturb(mask, how)
        submission.write_task1_mask(tmp_path, image_id, preds[image_id])
    ours = metrics.score_task1_folders(truth_dir, tmp_path)
    assert_task1_matches_scorer(ours, truth_dir, tmp_path)
    assert ours["num_images"] == 6
    # The exact prediction scores 1 and the empty one 0, whatever the scorer says.
    by_how = dict(zip(PERTURBATIONS, sorted(masks)))
    assert ours["per_image"][by_how["exact"]]["jaccard"] == 1.0
    assert ours["per_image"][by_how["empty"]]["jaccard"] == 0.0
    assert ours["per_image"][by_how["all_on"]]["sensitivity"] == 1.0
    # In memory (uint8 0/255 truth, bool prediction) gives the same numbers.
    in_memory = metrics.score_task1({i: (masks[i], preds[i]) for i in masks})
    assert in_memory["per_image"] == ours["per_image"]
    assert in_memory["overall"] == ours["overall"]
    assert_plain(ours)


def test_task1_every_image_perturbed_each_way_matches_scorer(official_scorer, task1_truth, tmp_path):
    """Each perturbation on every image (different lesion sizes), scored as one folder each."""
    truth_dir, masks = task1_truth
    for how in ("shifted", "eroded", "dilated"):
        pred_dir = tmp_path / how
        for image_id, mask in masks.items():
            submission.write_task1_mask(pred_dir, image_id, perturb(mask, how))
        assert_task1_matches_scorer(metrics.score_task1_folders(truth_dir, pred_dir), truth_dir, pred_dir)


def _write_raw_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode="L").save(path)


def test_task1_synthetic_edge_cases_match_scorer(official_scorer, tmp_path):
    h, w = 20, 30
    empty = np.zeros((h, w), bool)
    pixel_a = empty.copy()
    pixel_a[3, 4] = True
    pixel_b = empty.copy()
    pixel_b[10, 20] = True
    full = np.ones((h, w), bool)
    box = empty.copy()
    box[5:15, 5:25] = True
    cases = {  # truth, prediction
        "ISIC_0000001": (empty, empty),          # both empty: J = 1, sensitivity freebie
        "ISIC_0000002": (empty, pixel_a),        # truth empty, prediction not
        "ISIC_0000003": (pixel_a, pixel_a),      # single pixel hit
        "ISIC_0000004": (pixel_a, pixel_b),      # single pixel miss
        "ISIC_0000005": (full, full),            # no negatives: specificity freebie
        "ISIC_0000006": (box, empty),            # prediction empty
        "ISIC_0000007": (box, full),
    }
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    for image_id, (truth, pred) in cases.items():
        _write_raw_png(truth_dir / layout.segmentation_name(image_id), truth * 255)
        submission.write_task1_mask(pred_dir, image_id, pred)
    ours = metrics.score_task1_folders(truth_dir, pred_dir)
    assert_task1_matches_scorer(ours, truth_dir, pred_dir)
    # Hand-computed anchors.
    assert ours["per_image"]["ISIC_0000001"]["jaccard"] == 1.0
    assert ours["per_image"]["ISIC_0000002"]["jaccard"] == 0.0
    assert ours["per_image"]["ISIC_0000004"]["dice"] == 0.0
    assert ours["per_image"]["ISIC_0000007"]["jaccard"] == pytest.approx(200 / 600)
    assert ours["per_image"]["ISIC_0000007"]["threshold_jaccard"] == 0.0


def test_task1_helpers_hand_computed():
    truth = np.zeros((4, 4), np.uint8)
    truth[:2, :2] = 255                      # 4 px
    pred = np.zeros((4, 4), bool)
    pred[:2, :3] = True                      # 6 px, 4 overlap
    cm = metrics.segmentation_confusion(truth, pred)
    assert cm == {"TP": 4, "TN": 10, "FP": 2, "FN": 0}
    assert metrics.jaccard(cm) == pytest.approx(4 / 6)
    assert metrics.dice(cm) == pytest.approx(8 / 10)
    assert metrics.threshold_jaccard(0.64) == 0.0
    assert metrics.threshold_jaccard(0.65) == 0.65
    with pytest.raises(metrics.MetricError, match="differ in size"):
        metrics.segmentation_confusion(truth, np.zeros((4, 5), bool))
    with pytest.raises(metrics.MetricError, match="at least one"):
        metrics.score_task1({})


def test_task1_folder_errors(tmp_path):
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    _write_raw_png(truth_dir / "ISIC_0000001_segmentation.png", np.zeros((8, 8)))
    (truth_dir / "LICENSE.txt").write_text("ignored like the scorer does")
    pred_dir.mkdir()
    with pytest.raises(submission.SubmissionError, match="no prediction"):
        metrics.score_task1_folders(truth_dir, pred_dir)
    _write_raw_png(pred_dir / "ISIC_0000001_segmentation.png", np.zeros((8, 9)))
    with pytest.raises(submission.SubmissionError, match="8x9"):
        metrics.score_task1_folders(truth_dir, pred_dir)
    Image.new("RGB", (8, 8)).save(pred_dir / "ISIC_0000001_segmentation.png")
    with pytest.raises(submission.SubmissionError, match="single-channel"):
        metrics.score_task1_folders(truth_dir, pred_dir)
    _write_raw_png(pred_dir / "ISIC_0000001_segmentation.png", np.zeros((8, 8)))
    _write_raw_png(pred_dir / "copy_ISIC_0000001.png", np.zeros((8, 8)))
    with pytest.raises(submission.SubmissionError, match="several predictions"):
        metrics.score_task1_folders(truth_dir, pred_dir)
    (pred_dir / "copy_ISIC_0000001.png").unlink()
    assert metrics.score_task1_folders(truth_dir, pred_dir)["overall"] == 1.0
    (truth_dir / "notes.txt").write_text("x")
    with pytest.raises(submission.SubmissionError, match="notes.txt"):
        metrics.score_task1_folders(truth_dir, pred_dir)


# --------------------------------------------------------------------------- Task 2

def _blob(shape, center, radius):
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, center, radius, 1, -1)
    return mask.astype(bool)


def _task2_case(masks):
    """{image_id: {attribute: (truth, pred)}} on the real pigment-network masks plus
    synthetic others, covering attributes absent in truth and/or prediction."""
    ids = sorted(masks)
    case = {}
    for k, image_id in enumerate(ids):
        pn = masks[image_id] > 128
        shape = pn.shape
        empty = np.zeros(shape, bool)
        blob = _blob(shape, (300 + 40 * k, 400), 60)
        near_blob = _blob(shape, (320 + 40 * k, 410), 55)
        pn_pred = perturb(masks[image_id], PERTURBATIONS[k])
        case[image_id] = {
            "pigment_network": (pn, pn_pred),
            # absent in truth and prediction everywhere but one false positive
            "negative_network": (empty, blob if k == 0 else empty),
            # present in truth for two images: one hit, one missed
            "streaks": (blob if k in (1, 2) else empty, near_blob if k in (1, 3) else empty),
            # absent in truth, sometimes predicted
            "milia_like_cyst": (blob if k == 5 else empty, blob if k in (4, 5) else empty),
            # absent in both for every image: adds only true negatives
            "globules": (empty, empty),
        }
    return case


def _write_task2_folders(case, truth_dir, pred_dir):
    for image_id, by_attribute in case.items():
        for attribute, (truth, _) in by_attribute.items():
            _write_raw_png(truth_dir / layout.attribute_name(image_id, attribute), truth * 255)
        submission.write_task2_masks(pred_dir, image_id, {a: p for a, (_, p) in by_attribute.items()})


def assert_task2_matches_scorer(ours, truth_dir, pred_dir):
    theirs = scorer_task2.score(pathlib.Path(truth_dir), pathlib.Path(pred_dir))
    assert_close(ours["overall"], theirs["overall"], "overall")
    for key in ("jaccard", "dice"):
        assert_close(ours["micro_average"][key], theirs["micro_average"][key], f"micro {key}")
    attributes = sorted(set(theirs) - {"overall", "micro_average"})
    assert ours["attributes_scored"] == attributes
    for attribute in attributes:
        for key in ("jaccard", "dice"):
            assert_close(ours["per_attribute"][attribute][key], theirs[attribute][key],
                          f"{attribute} {key}")
    return theirs


@pytest.fixture(scope="module")
def pigment_masks(isic_sample):
    paths = sorted((isic_sample / TASK2_GT).glob("*_attribute_pigment_network.png"))
    assert len(paths) == 6
    return {layout.isic_id(p.name): read_png(p) for p in paths}


def test_task2_complete_folders_match_scorer(official_scorer, pigment_masks, tmp_path):
    case = _task2_case(pigment_masks)
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    _write_task2_folders(case, truth_dir, pred_dir)
    ours = metrics.score_task2_folders(truth_dir, pred_dir)
    theirs = assert_task2_matches_scorer(ours, truth_dir, pred_dir)
    assert ours["attributes_scored"] == sorted(layout.ATTRIBUTES)
    assert ours["attributes_missing"] == []
    assert ours["per_attribute"]["globules"]["jaccard"] == 1.0   # empty everywhere: freebie
    assert ours["per_attribute"]["negative_network"]["jaccard"] == 0.0
    # Overall is the micro average, not the mean of the five.
    mean5 = np.mean([theirs[a]["jaccard"] for a in layout.ATTRIBUTES])
    assert_close(ours["mean_attribute_jaccard"], mean5, "mean of five")
    assert abs(ours["overall"] - ours["mean_attribute_jaccard"]) > 1e-3
    # In memory gives the same numbers.
    in_memory = metrics.score_task2(case)
    for key in ("overall", "mean_attribute_jaccard"):
        assert_close(in_memory[key], ours[key], key)
    for attribute in layout.ATTRIBUTES:
        assert_close(in_memory["per_attribute"][attribute]["dice"],
                     ours["per_attribute"][attribute]["dice"], attribute)
    assert_plain(ours)


def test_task2_pigment_network_only_truth_matches_scorer(official_scorer, isic_sample, pigment_masks, tmp_path):
    """The real sample has truth files for one attribute: both scorers score that one only
    and ignore the prediction files of the other four."""
    truth_dir = isic_sample / TASK2_GT
    for k, (image_id, mask) in enumerate(sorted(pigment_masks.items())):
        submission.write_task2_masks(tmp_path, image_id, {
            "pigment_network": perturb(mask, PERTURBATIONS[k]),
            "streaks": np.ones(mask.shape, bool)})
    assert len(list(tmp_path.iterdir())) == 30
    ours = metrics.score_task2_folders(truth_dir, tmp_path)
    assert_task2_matches_scorer(ours, truth_dir, tmp_path)
    assert ours["attributes_scored"] == ["pigment_network"]
    assert ours["attributes_missing"] == [a for a in layout.ATTRIBUTES if a != "pigment_network"]
    assert ours["overall"] == ours["per_attribute"]["pigment_network"]["jaccard"]
    assert_plain(ours)


def test_task2_normalisation_hand_computed():
    """Two images of different sizes weigh the same after normalisation."""
    small_t = np.zeros((10, 10), bool)
    small_t[:5] = True                                   # 50 of 100 px
    big_t = np.zeros((100, 100), bool)
    big_t[:10] = True                                    # 1000 of 10000 px
    big_p = np.zeros((100, 100), bool)
    big_p[:20] = True                                    # 1000 FP
    result = metrics.score_task2({
        "a": {"streaks": (small_t, small_t)},
        "b": {"streaks": (big_t, big_p)},
    })
    tp, fp = 0.5 + 0.1, 0.1
    assert result["per_attribute"]["streaks"]["jaccard"] == pytest.approx(tp / (tp + fp))
    assert result["per_attribute"]["streaks"]["dice"] == pytest.approx(2 * tp / (2 * tp + fp))
    none_pred = metrics.score_task2({"a": {"globules": (small_t, None)}})
    assert none_pred["overall"] == 0.0


# --------------------------------------------------------------------------- Task 3

@pytest.fixture(scope="module")
def task3_truth(isic_sample):
    path = isic_sample / TASK3_CSV
    table = pd.read_csv(path).set_index("image")
    assert len(table) == 18
    return path, table


def _prediction_sets(truth):
    """name -> [N, 7] probabilities (rows aligned with truth)."""
    onehot = truth.to_numpy(np.float64)
    labels = onehot.argmax(axis=1)
    n, c = onehot.shape
    rng = np.random.default_rng(0)
    correct = 0.1 * rng.dirichlet(np.ones(c), n) + 0.9 * onehot
    wrong = np.roll(correct, 1, axis=1)
    uniform = np.full((n, c), 1 / 7)
    mixed = rng.dirichlet(np.ones(c) * 0.5, n)
    mixed[:6] = correct[:6]
    mixed[6:9] = wrong[6:9]
    tied = mixed.copy()
    for i in range(9, 13):               # two classes share the maximum: undecided
        tied[i] = 0.05
        tied[i, labels[i]] = 0.35
        tied[i, (labels[i] + 2) % c] = 0.35
    tied[13] = uniform[13]
    return {"correct": correct, "wrong": wrong, "uniform": uniform, "mixed": mixed,
            "tied": tied, "random": rng.random((n, c))}


def assert_task3_matches_scorer(ours, theirs):
    assert_close(ours["overall"], theirs.overall, "overall")
    assert_close(ours["validation"], theirs.validation, "validation")
    assert_close(ours["balanced_accuracy"], theirs.aggregate["balanced_accuracy"], "BA")
    for category in theirs.per_category.index:
        for key in metrics.TASK3_CATEGORY_KEYS:
            assert_close(ours["per_category"][category][key],
                         theirs.per_category.at[category, key], f"{category} {key}")
    for key in metrics.TASK3_CATEGORY_KEYS:
        assert_close(ours["macro_average"][key], theirs.macro_average[key], f"macro {key}")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_task3_real_sample_matches_scorer(official_scorer, task3_truth, tmp_path):
    truth_csv, truth = task3_truth
    sets = _prediction_sets(truth)
    for name, probs in sets.items():
        pred_csv = tmp_path / f"{name}.csv"
        submission.write_task3_csv(pred_csv, zip(truth.index, probs))
        ours = metrics.score_task3_files(truth_csv, pred_csv)
        theirs = ClassificationScore.from_file(truth_csv, pred_csv,
                                               ClassificationMetric.BALANCED_ACCURACY)
        assert_task3_matches_scorer(ours, theirs)
        in_memory = metrics.score_task3(truth, pd.DataFrame(probs, index=truth.index,
                                                            columns=layout.DIAGNOSES))
        assert_close(in_memory["overall"], ours["overall"], f"{name} in memory")
        assert_plain(ours)
        sets[name] = ours
    assert sets["correct"]["overall"] == 1.0
    assert sets["wrong"]["overall"] == 0.0
    assert sets["uniform"]["overall"] == 0.0
    assert sets["uniform"]["undecided_predictions"] == 18
    assert sets["tied"]["undecided_predictions"] == 5


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_task3_balanced_accuracy_is_mean_recall(task3_truth):
    """Without ties it equals sklearn's balanced accuracy (an independent reference)."""
    from sklearn.metrics import balanced_accuracy_score
    _, truth = task3_truth
    probs = _prediction_sets(truth)["random"]
    ours = metrics.score_task3(truth.to_numpy(), probs)
    expected = balanced_accuracy_score(truth.to_numpy().argmax(1), probs.argmax(1))
    assert ours["overall"] == pytest.approx(expected, abs=1e-12)
    labels = metrics.score_task3(truth.to_numpy().argmax(1), probs)
    assert labels["overall"] == ours["overall"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_task3_weights_and_excluded_image_match_scorer(official_scorer, task3_truth):
    """ISIC_0035068 gets weight 0; explicit score/validation weights are honoured."""
    _, truth = task3_truth
    table = truth.copy()
    table.index = [f"ISIC_{35060 + i:07d}" for i in range(len(table))]   # includes ISIC_0035068
    table.index.name = "image"
    probs = _prediction_sets(truth)["mixed"]
    probs[8] = np.roll(probs[8], 3)      # row of ISIC_0035068: whatever it says must not count
    pred = pd.DataFrame(probs, index=table.index, columns=layout.DIAGNOSES)
    pred_text = pred.reset_index().to_csv(index=False)
    for weighted in (False, True):
        truth_table = table.copy()
        if weighted:
            truth_table["score_weight"] = np.linspace(0.5, 2.0, len(truth_table))
            truth_table["validation_weight"] = np.linspace(2.0, 0.2, len(truth_table))
        truth_text = truth_table.reset_index().to_csv(index=False)
        theirs = ClassificationScore.from_stream(io.StringIO(truth_text), io.StringIO(pred_text),
                                                 ClassificationMetric.BALANCED_ACCURACY)
        ours = metrics.score_task3_files(io.StringIO(truth_text), io.StringIO(pred_text))
        assert_task3_matches_scorer(ours, theirs)
        assert_task3_matches_scorer(metrics.score_task3(truth_table, pred), theirs)
        if weighted:
            assert abs(ours["overall"] - ours["validation"]) > 1e-6


def test_task3_file_errors(task3_truth, tmp_path):
    truth_csv, truth = task3_truth
    ints = truth.reset_index().astype({c: int for c in layout.DIAGNOSES})
    bad = tmp_path / "ints.csv"
    ints.to_csv(bad, index=False)
    with pytest.raises(submission.SubmissionError, match="not floating point"):
        metrics.score_task3_files(truth_csv, bad)
    short = tmp_path / "short.csv"
    truth.iloc[:-1].reset_index().to_csv(short, index=False)
    with pytest.raises(submission.SubmissionError, match="lacks images"):
        metrics.score_task3_files(truth_csv, short)
    extra = tmp_path / "extra.csv"
    truth.assign(OTHER=0.0).reset_index().to_csv(extra, index=False)
    with pytest.raises(submission.SubmissionError, match="unknown columns"):
        metrics.score_task3_files(truth_csv, extra)


def test_task3_confusion_matrix_hand_computed():
    truth = np.array([0, 0, 1, 2, 2, 2])
    pred = np.zeros((6, 7))
    pred[[0, 1, 2, 3, 4, 5], [0, 1, 1, 2, 0, 2]] = 0.9
    pred[5, 3] = 0.9                       # tie between classes 2 and 3
    result = metrics.task3_confusion_matrix(truth, pred)
    matrix = np.array(result["matrix"])
    assert matrix.shape == (7, 7)
    assert matrix[0, 0] == 1 and matrix[0, 1] == 1 and matrix[1, 1] == 1
    assert matrix[2, 2] == 2 and matrix[2, 0] == 1
    assert matrix.sum() == 6
    assert result["undecided"] == 1
    assert result["labels"] == list(layout.DIAGNOSES)
    assert_plain(result)


# --------------------------------------------------------------------------- COCO mask mAP

def _square(shape, y, x, h, w):
    mask = np.zeros(shape, bool)
    mask[y:y + h, x:x + w] = True
    return mask


def _stack(*masks, shape=(64, 64)):
    return np.stack(masks, axis=-1) if masks else np.zeros(shape + (0,), bool)


def test_map_perfect_predictions_score_one():
    shape = (64, 64)
    a, b, c = _square(shape, 2, 2, 20, 20), _square(shape, 30, 30, 25, 20), _square(shape, 5, 40, 10, 10)
    gt = [(_stack(a, b), [1, 2]), (_stack(c), [1]), (_stack(), [])]
    pred = [(_stack(b, a), [2, 1], [0.8, 0.9]), (_stack(c), [1], [0.5]), (_stack(), [], [])]
    result = metrics.coco_mask_map(gt, pred, class_names={1: "MEL", 2: "NV"})
    assert result["mAP@0.5"] == pytest.approx(1.0)
    assert result["mAP@[.5:.95]"] == pytest.approx(1.0)
    assert set(result["per_class"]) == {"MEL", "NV"}
    assert_plain(result)


def test_map_false_positive_ranked_first_halves_ap():
    """One GT; a FP at score 0.9 then the exact TP at 0.8: precision 1/2 at recall 1,
    so the interpolated precision is 0.5 at every recall point: AP = 0.5."""
    shape = (64, 64)
    gt_mask = _square(shape, 10, 10, 20, 20)
    fp_mask = _square(shape, 40, 40, 10, 10)
    result = metrics.coco_mask_map([(_stack(gt_mask), [1])],
                                   [(_stack(fp_mask, gt_mask), [1, 1], [0.9, 0.8])])
    assert result["mAP@0.5"] == pytest.approx(0.5)
    assert result["mAP@[.5:.95]"] == pytest.approx(0.5)
    # Ranked after the TP, the same FP costs nothing.
    after = metrics.coco_mask_map([(_stack(gt_mask), [1])],
                                  [(_stack(fp_mask, gt_mask), [1, 1], [0.7, 0.8])])
    assert after["mAP@0.5"] == pytest.approx(1.0)


def test_map_partial_overlap_counts_at_low_iou_thresholds_only():
    """IoU 0.72 (72 of 100 px): a TP at thresholds .50-.70 (5 of 10), a miss above."""
    shape = (32, 32)
    gt_mask = _square(shape, 5, 5, 10, 10)
    pred_mask = _square(shape, 5, 5, 8, 9)
    result = metrics.coco_mask_map([(_stack(gt_mask, shape=shape), [1])],
                                   [(_stack(pred_mask, shape=shape), [1], [0.9])])
    assert result["mAP@0.5"] == pytest.approx(1.0)
    assert result["mAP@[.5:.95]"] == pytest.approx(0.5)


def test_map_empty_cases():
    shape = (16, 16)
    gt_mask = _square(shape, 2, 2, 6, 6)
    no_pred = metrics.coco_mask_map([(_stack(gt_mask, shape=shape), [1]), (_stack(shape=shape), [])],
                                    [(_stack(shape=shape), [], []), (_stack(shape=shape), [], [])])
    assert no_pred["mAP@0.5"] == 0.0 and no_pred["mAP@[.5:.95]"] == 0.0
    no_gt = metrics.coco_mask_map([(_stack(shape=shape), [])], [(_stack(gt_mask, shape=shape), [1], [0.5])])
    assert np.isnan(no_gt["mAP@0.5"]) and np.isnan(no_gt["mAP@[.5:.95]"])
    assert_plain(no_gt)
    # One class found, one missed: mean of 1 and 0.
    other = _square(shape, 9, 9, 5, 5)
    half = metrics.coco_mask_map([(_stack(gt_mask, other, shape=shape), [1, 2])],
                                 [(_stack(gt_mask, shape=shape), [1], [0.9])])
    assert half["mAP@0.5"] == pytest.approx(0.5)
    assert half["per_class"]["2"]["AP@0.5"] == 0.0
    with pytest.raises(metrics.MetricError, match="class id"):
        metrics.coco_mask_map([(_stack(gt_mask, shape=shape), [1, 2])], [(_stack(shape=shape), [], [])])


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_task3_class_absent_from_truth(official_scorer, task3_truth, recwarn):
    """No VASC row in the truth. The scorer's ClassificationScore raises there (its
    AUC-above-80%-sensitivity interpolates an empty ROC segment); ours scores it:
    VASC recall is skipped by the balanced-accuracy mean (the scorer's own function does
    the same), VASC's AUC values are NaN, and the other classes match the scorer's
    per-class function."""
    from isic_challenge_scoring import metrics as scorer_metrics
    _, truth = task3_truth
    keep = truth["VASC"] == 0.0
    subset = truth[keep]
    probs = _prediction_sets(truth)["mixed"][keep.to_numpy()]
    pred = pd.DataFrame(probs, index=subset.index, columns=layout.DIAGNOSES)
    truth_text = subset.reset_index().to_csv(index=False)
    pred_text = pred.reset_index().to_csv(index=False)
    with pytest.raises(ValueError):
        ClassificationScore.from_stream(io.StringIO(truth_text), io.StringIO(pred_text),
                                        ClassificationMetric.BALANCED_ACCURACY)
    recwarn.clear()
    ours = metrics.score_task3_files(io.StringIO(truth_text), io.StringIO(pred_text))
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)], "sklearn warnings leak"
    weights = pd.Series(1.0, index=subset.index)
    assert_close(ours["overall"],
                 scorer_metrics.balanced_multiclass_accuracy(subset, pred, weights), "BA")
    labels_t, labels_p = subset.to_numpy().argmax(1), probs.argmax(1)
    recalls = [np.mean(labels_p[labels_t == c] == c) for c in np.unique(labels_t)]
    assert ours["overall"] == pytest.approx(np.mean(recalls))
    for category in layout.DIAGNOSES[:-1]:
        theirs = ClassificationScore._category_score(subset[category], pred[category], weights, category)
        for key in metrics.TASK3_CATEGORY_KEYS:
            assert_close(ours["per_category"][category][key], theirs[key], f"{category} {key}")
    assert np.isnan(ours["per_category"]["VASC"]["auc"])
    assert np.isnan(ours["per_category"]["VASC"]["auc_sens_80"])
    assert ours["per_category"]["VASC"]["sensitivity"] == 1.0      # no positives: freebie
    assert_close(ours["macro_average"]["auc"],
                 np.mean([ours["per_category"][c]["auc"] for c in layout.DIAGNOSES[:-1]]), "macro")
    assert_plain(ours)
