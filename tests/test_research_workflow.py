"""The research workflow around the model: the official validation and test splits, scoring any
submission (equal to investigate and to the official scorer), config files, the runs table and
the installable `lesions` command."""
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import lesions
from isic import layout
from tests.helpers import ROOT, script_env, set_args, tiny_settings

# The tests' tiny network, untrained (--weights none) but always detecting something.
SETTINGS = tiny_settings(DETECTION_MIN_CONFIDENCE=0.0, DETECTION_MAX_INSTANCES=5)
SPLITS = ("Training", "Validation", "Test")


def _copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)


@pytest.fixture(scope="module")
def official(isic_sample, tmp_path_factory):
    """The real sample regrouped into the official layout of all three splits: Task 1/2 images 2 per
    split, Task 3 images 4 (training) or 7 (validation, test: every class), each split with its own ground-truth folders (Task 2's
    `_v3` for training only) and CSV. Returns (root, {(task, split): [ids]})."""
    root = tmp_path_factory.mktemp("official")
    ids12 = sorted(p.stem for p in (isic_sample / "ISIC2018_Task1-2_Training_Input").glob("*.jpg"))
    rows = (isic_sample / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
            ).read_text().splitlines()
    header, task3_rows = rows[0], sorted(rows[1:])
    # Per class, its images go to Test, Validation, Training in turn: the validation and test
    # splits hold every class (the official scorer cannot score a class without images).
    by_class = {}
    for row in task3_rows:
        by_class.setdefault([float(v) for v in row.split(",")[1:]].index(1.0), []).append(row)
    task3_split = {row: SPLITS[2 - n] for rows_of_class in by_class.values() for n, row in enumerate(rows_of_class)}
    ids = {}
    for k, split in enumerate(SPLITS):
        part = ids12[2 * k:2 * k + 2]
        for i in part:
            _copy(isic_sample / "ISIC2018_Task1-2_Training_Input" / f"{i}.jpg",
                  root / layout.input_dir("segmentation", split) / f"{i}.jpg")
            _copy(isic_sample / "ISIC2018_Task1_Training_GroundTruth" / layout.segmentation_name(i),
                  root / layout.truth_path("segmentation", split) / layout.segmentation_name(i))
            for attribute in layout.ATTRIBUTES:
                name = layout.attribute_name(i, attribute)
                source = isic_sample / "ISIC2018_Task2_Training_GroundTruth_v3" / name
                target = root / layout.task2_gt_dir(split) / name
                if source.is_file():
                    _copy(source, target)
                else:  # the sample has pigment_network only: the others are empty masks
                    target.parent.mkdir(parents=True, exist_ok=True)
                    size = Image.open(isic_sample / "ISIC2018_Task1-2_Training_Input" / f"{i}.jpg").size
                    Image.fromarray(np.zeros(size[::-1], np.uint8)).save(target)
        ids["segmentation", split] = ids["attributes", split] = part
        part3 = [row for row in task3_rows if task3_split[row] == split]
        csv_path = root / layout.truth_path("classification", split)
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        csv_path.write_text("\n".join([header] + part3) + "\n")
        for row in part3:
            i = row.split(",")[0]
            _copy(isic_sample / "ISIC2018_Task3_Training_Input" / f"{i}.jpg",
                  root / layout.input_dir("classification", split) / f"{i}.jpg")
            _copy(isic_sample / layout.HAM10000_MASK_DIR / layout.segmentation_name(i),
                  root / layout.HAM10000_MASK_DIR / layout.segmentation_name(i))
        ids["classification", split] = sorted(r.split(",")[0] for r in part3)
    return root, ids


def investigate(root, task, split, out):
    args = ["--mode", "investigate", "--task", task, "--dataset", str(root), "--split", split, "--weights", "none",
            "--output", str(out)] + set_args(SETTINGS)
    assert lesions.main(args) == 0
    return json.loads((out / "metrics.json").read_text())


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("lesions.py: error: ") and "Traceback" not in err, err[-2000:]
    for fragment in fragments:
        assert fragment in err, err[-2000:]
    return err


def test_task2_ground_truth_is_v3_for_training_only():
    assert layout.task2_gt_dir("Training") == "ISIC2018_Task2_Training_GroundTruth_v3"
    assert layout.task2_gt_dir("Validation") == "ISIC2018_Task2_Validation_GroundTruth"
    assert layout.task2_gt_dir("Test") == "ISIC2018_Task2_Test_GroundTruth"
    assert layout.truth_path("classification", "Test") == \
        "ISIC2018_Task3_Test_GroundTruth/ISIC2018_Task3_Test_GroundTruth.csv"


@pytest.mark.parametrize("task,split", [("segmentation", "validation"), ("segmentation", "test"),
                                        ("attributes", "validation"), ("classification", "test")])
def test_investigate_scores_a_whole_official_split_and_score_agrees(official, task, split, tmp_path, capsys):
    """investigate --split scores exactly that split's images and says so; --mode score on its
    predictions gives the same numbers, which are the official scorer's."""
    root, ids = official
    name = layout.SPLIT_OPTIONS[split]
    report = investigate(root, task, split, tmp_path / "inv")
    assert report["split"] == name and report["subset"] == "all"
    assert sorted(report["image_ids"]) == ids[task, name]
    assert f"{name} split" in (tmp_path / "inv" / "report.md").read_text()

    predictions = tmp_path / "inv" / "predictions"
    args = ["--mode", "score", "--task", task, "--predictions", str(predictions), "--dataset", str(root),
            "--split", split, "--output", str(tmp_path / "score")]
    assert lesions.main(args) == 0
    assert f"of the {name} split" in capsys.readouterr().out
    scored = json.loads((tmp_path / "score" / "metrics.json").read_text())
    assert scored["split"] == name and scored["num_images"] == len(ids[task, name])
    assert scored["isic"]["overall"] == pytest.approx(report["isic"]["overall"], abs=1e-9)
    assert (tmp_path / "score" / "report.md").is_file() and scored["figures"]
    assert all((tmp_path / "score" / f).is_file() for f in scored["figures"])

    truth = root / layout.truth_path(task, name)
    if task == "segmentation":
        from isic_challenge_scoring import SegmentationScore
        official_score = SegmentationScore.from_dir(truth, predictions)
        assert scored["isic"]["overall"] == pytest.approx(official_score.overall, abs=1e-6)
        assert scored["isic"]["macro_average"]["jaccard"] == pytest.approx(
            official_score.macro_average["jaccard"], abs=1e-6)
    elif task == "attributes":
        from isic_challenge_scoring import task2
        official_score = task2.score(truth, predictions)
        assert scored["isic"]["overall"] == pytest.approx(official_score["overall"], abs=1e-6)
        for attribute in layout.ATTRIBUTES:
            assert scored["isic"]["per_attribute"][attribute]["jaccard"] == pytest.approx(
                official_score[attribute]["jaccard"], abs=1e-6, nan_ok=True)
    else:
        from isic_challenge_scoring import ClassificationMetric, ClassificationScore
        official_score = ClassificationScore.from_file(truth, predictions / "ISIC2018_Task3_predictions.csv",
                                                       ClassificationMetric.BALANCED_ACCURACY)
        assert scored["isic"]["overall"] == pytest.approx(official_score.overall, abs=1e-6)
        assert scored["isic"]["macro_average"]["auc"] == pytest.approx(
            official_score.macro_average["auc"], abs=1e-6, nan_ok=True)


def test_training_split_keeps_the_carving_and_other_splits_refuse_it(official, tmp_path, capsys):
    root, _ = official
    args = ["--mode", "investigate", "--dataset", str(root), "--split", "test", "--subset", "val",
            "--weights", "none", "--output", str(tmp_path)] + set_args(SETTINGS)
    assert lesions.main(args) == 2
    one_line_error(capsys, "--subset val carves the training split")
    assert not (tmp_path / "metrics.json").exists()


def test_a_split_without_ground_truth_names_the_folder_it_looked_for(official, tmp_path, capsys):
    root, _ = official
    data = tmp_path / "data"
    shutil.copytree(root, data)
    shutil.rmtree(data / layout.truth_path("segmentation", "Test"))
    args = ["--mode", "investigate", "--dataset", str(data), "--split", "test", "--weights", "none",
            "--output", str(tmp_path / "out")] + set_args(SETTINGS)
    assert lesions.main(args) == 2
    one_line_error(capsys, "ISIC2018_Task1_Test_GroundTruth not found", layout.DATA_URL)
    assert lesions.main(["--mode", "score", "--dataset", str(data), "--split", "test",
                         "--predictions", str(data)]) == 2
    one_line_error(capsys, "ISIC2018_Task1_Test_GroundTruth not found", layout.DATA_URL)


def test_predict_on_a_split_reads_its_input_folder(official, tmp_path):
    root, ids = official
    args = ["--mode", "predict", "--task", "classification", "--dataset", str(root), "--split", "validation",
            "--weights", "none", "--output", str(tmp_path)] + set_args(SETTINGS)
    assert lesions.main(args) == 0
    rows = (tmp_path / "ISIC2018_Task3_predictions.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == ids["classification", "Validation"]


def test_a_malformed_mask_submission_is_named_file_by_file(official, tmp_path, capsys):
    root, ids = official
    truth = root / layout.truth_path("segmentation", "Training")
    pred = tmp_path / "pred"
    pred.mkdir()
    first, second = ids["segmentation", "Training"]
    shape = np.array(Image.open(truth / layout.segmentation_name(first))).shape
    Image.fromarray(np.zeros((shape[0] + 1, shape[1]), np.uint8)).save(pred / layout.segmentation_name(first))
    assert lesions.main(["--mode", "score", "--predictions", str(pred), "--truth", str(truth),
                         "--output", str(tmp_path / "out")]) == 2
    err = one_line_error(capsys, f"{layout.segmentation_name(first)}: {shape[0] + 1}x{shape[1]} (HxW)",
                         f"{layout.segmentation_name(second)}: missing", "breaks the ISIC format in 2 place(s)")
    assert not (tmp_path / "out").exists()

    Image.fromarray(np.zeros(shape + (3,), np.uint8)).save(pred / layout.segmentation_name(first))
    Image.fromarray(np.ones(shape, np.uint8)).save(pred / layout.segmentation_name(second))
    assert lesions.main(["--mode", "score", "--predictions", str(pred), "--truth", str(truth)]) == 2
    err = one_line_error(capsys, f"{layout.segmentation_name(first)}: 3-channel image",
                         f"{layout.segmentation_name(second)}: 0/1 values")
    assert "2 place(s)" in err


def test_a_malformed_task3_csv_is_named_row_by_row(official, tmp_path, capsys):
    root, ids = official
    truth = root / layout.truth_path("classification", "Test")
    test_ids = ids["classification", "Test"]
    header = "image," + ",".join(layout.DIAGNOSES)
    good = [f"{i}," + ",".join(["0.5"] + ["0.1"] * 6) for i in test_ids]
    cases = {
        "extra column": ([header + ",UNK"] + [r + ",0.0" for r in good], ["extra column 'UNK'"]),
        "missing row and out of range": ([header] + good[1:-1] + [good[-1].replace(",0.5,", ",1.5,")],
                                         [f"no row for {test_ids[0]}", "MEL = 1.5 is outside [0, 1]"]),
        "integers and text": ([header] + [f"{i},1,0,0,0,0,0,x" for i in test_ids],
                              ["column MEL holds only integers", "VASC is 'x', not a number"]),
    }
    for lines, fragments in cases.values():
        csv = tmp_path / "submission.csv"
        csv.write_text("\n".join(lines) + "\n")
        assert lesions.main(["--mode", "score", "--task", "classification", "--predictions", str(csv),
                             "--truth", str(truth)]) == 2
        one_line_error(capsys, "submission.csv", *fragments)
    csv.write_text("\n".join([header] + good) + "\n")
    assert lesions.main(["--mode", "score", "--task", "classification", "--predictions", str(csv),
                         "--truth", str(truth), "--output", str(tmp_path / "ok")]) == 0
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())["num_images"] == len(test_ids)


# --- config files -------------------------------------------------------------------------------

def parse(*argv):
    return lesions.build_parser().parse_args(list(argv))


def test_a_yaml_config_file_sets_values_and_set_applies_on_top(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("BACKBONE: resnet50\nLEARNING_MOMENTUM: 0.8\nSCHEDULE:\n  - [heads, 2, 0.002]\n")
    config, _ = lesions.config_for(parse("--mode", "train", "--config", str(path), "--set", "LEARNING_MOMENTUM=0.7"))
    assert (config.BACKBONE, config.LEARNING_MOMENTUM, config.SCHEDULE) == ("resnet50", 0.7, [["heads", 2, 0.002]])
    assert config.value_sources["BACKBONE"] == f"config file {path}"
    assert config.value_sources["LEARNING_MOMENTUM"] == "--set"
    assert config.value_sources["IMAGE_MAX_DIM"] == "SegmentationConfig default"
    saved = tmp_path / "config.json"
    config.save(saved)
    sources = json.loads(saved.read_text())["_value_sources"]
    assert sources["BACKBONE"] == f"config file {path}" and sources["BATCH_SIZE"] == "derived"


def test_config_file_errors_are_one_line(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text("BACKBON: resnet50\n")
    assert lesions.main(["--mode", "train", "--config", str(path)]) == 2
    one_line_error(capsys, f"--config {path}: unknown Config attribute 'BACKBON'; the closest attribute is BACKBONE")
    assert lesions.main(["--mode", "train", "--set", "LEARNING_RATEE=0.1"]) == 2
    one_line_error(capsys, "--set: unknown Config attribute 'LEARNING_RATEE'; the closest attribute is LEARNING_RATE")
    path.write_text("NAME: attributes\n")
    assert lesions.main(["--mode", "train", "--task", "classification", "--config", str(path)]) == 2
    one_line_error(capsys, "is a 'attributes' config (NAME) but --task is classification")
    path.write_text("- BACKBONE\n")
    assert lesions.main(["--mode", "train", "--config", str(path)]) == 2
    one_line_error(capsys, "holds a list, not a mapping")
    broken = tmp_path / "broken.json"
    broken.write_text("{\"BACKBONE\": ")
    assert lesions.main(["--mode", "train", "--config", str(broken)]) == 2
    one_line_error(capsys, "not valid JSON")


def test_a_config_file_gives_its_task_when_task_is_not_given(tmp_path):
    path = tmp_path / "c.json"
    lesions.make_config("classification").save(path)
    args = parse("--mode", "train", "--config", str(path))
    from isic.modes import settings
    assert settings.task_of(settings.read_config_file(path), args.task, path, layout.TASKS) == "classification"


# --- the installed command ----------------------------------------------------------------------

def test_pip_install_gives_a_lesions_command_that_trains_from_another_folder(tmp_path):
    """A non-editable install (no dependencies: they are this venv's) from a copy of the sources,
    then `lesions` from an empty folder: the run lands in that folder's logs/."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("lesions.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for package in ("mrcnn", "isic"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(target), str(source)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    command = target / "bin" / "lesions"
    assert command.is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = script_env(PYTHONPATH=str(target))  # the installed copy only, not the checkout
    args = ["--mode", "train", "--dataset", "synthetic", "--epochs", "1", "--steps-per-epoch", "2",
            "--set", "VALIDATION_STEPS=1"] + set_args(tiny_settings())
    result = subprocess.run([str(command), *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (elsewhere / "logs").iterdir()
    assert (run_dir / "mask_rcnn_segmentation_0001.h5").is_file()
    assert json.loads((run_dir / "run.json").read_text())["weights"] == "none"
    listed = subprocess.run([str(command), "--mode", "runs"], cwd=elsewhere, env=env, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0 and run_dir.name in listed.stdout, listed.stderr[-2000:]
