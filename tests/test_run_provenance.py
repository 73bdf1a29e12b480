"""Trustworthy runs: the split is recorded and reused, a checkpoint of another task is
refused, run folders never collide and resuming appends, partial ImageNet loads are
reported, small schedule/crop/batch rules, and no run folder is left by a failed start."""
import hashlib
import json
import logging
import os
import pathlib
import shutil
import sys

import pytest

import lesions
from isic.modes import run_folders
from isic.data.datasets import ISICSegmentationDataset, split_ids
from isic.errors import UserError
from isic.synthetic import generate_dataset
from tests.helpers import run_cli, set_args, tiny_settings

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The tests' tiny network, one image per step, at most 5 detections, no augmentation.
TINY_SETTINGS = tiny_settings(IMAGES_PER_GPU=1, VALIDATION_STEPS=1, AUGMENTATION="none", DETECTION_MAX_INSTANCES=5)


def train_args(data, logs, *extra, epochs=1):
    args = ["--mode", "train", "--dataset", data, "--logs", logs, "--epochs", epochs, "--steps-per-epoch", 2,
            "--layers", "all"]
    return args + set_args(TINY_SETTINGS) + list(extra)


def one_line_error(result, *fragments):
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("lesions.py: error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, last
    return last


def digest(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("isic_synthetic")
    generate_dataset(root, count=10, image_size=(64, 64), seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def first_run(data, tmp_path_factory):
    """A one-epoch Task 1 run trained with --seed 7."""
    logs = tmp_path_factory.mktemp("logs")
    result = run_cli(*train_args(data, logs, "--weights", "none", "--seed", 7))
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p for p in logs.iterdir() if p.is_dir()]
    return logs, run_dir


def expected_val_ids(data, seed):
    dataset = ISICSegmentationDataset()
    dataset.load_isic(data, subset="all")
    return split_ids([info["id"] for info in dataset.image_info], seed=seed)[1]


# --- 1. the split is recorded, separate from the augmentation seed, and reused -----------------

def test_run_records_the_split_seed_and_validation_ids(data, first_run):
    _, run_dir = first_run
    split = json.loads((run_dir / "split.json").read_text())
    assert split["split_seed"] == 42
    assert split["val_ids"] == expected_val_ids(data, 42)
    assert split["val_ids"] != expected_val_ids(data, 7)  # --seed 7 no longer moves the split
    assert split["val_ids_sha256"] == hashlib.sha256("\n".join(split["val_ids"]).encode()).hexdigest()
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["SEED"], saved["SPLIT_SEED"]) == (7, 42)


def test_investigate_with_another_seed_scores_the_runs_own_validation_images(data, first_run, tmp_path):
    _, run_dir = first_run
    checkpoint = run_dir / "mask_rcnn_segmentation_0001.h5"
    out = tmp_path / "inv"
    result = run_cli("--mode", "investigate", "--dataset", data, "--weights", checkpoint, "--seed", 9,
                 "--output", out)
    assert result.returncode == 0, result.stderr[-3000:]
    scored = sorted(json.loads((out / "metrics.json").read_text())["isic"]["per_image"])
    assert scored == sorted(json.loads((run_dir / "split.json").read_text())["val_ids"])


def test_another_split_seed_on_a_trained_run_is_one_line(data, first_run, tmp_path):
    _, run_dir = first_run
    checkpoint = run_dir / "mask_rcnn_segmentation_0001.h5"
    result = run_cli("--mode", "investigate", "--dataset", data, "--weights", checkpoint, "--split-seed", 3,
                 "--output", tmp_path / "inv")
    one_line_error(result, "--split-seed 3", "42", "--subset all")
    assert not (tmp_path / "inv").exists()


def test_val_images_outside_the_runs_split_are_refused(data, first_run, tmp_path):
    """A dataset whose 'val' subset holds images the run did not hold out (here: a recorded
    list edited to miss one) is refused instead of scored."""
    _, run_dir = first_run
    copy = tmp_path / run_dir.name
    copy.mkdir()
    for name in ("config.json", "mask_rcnn_segmentation_0001.h5"):
        (copy / name).write_bytes((run_dir / name).read_bytes())
    split = json.loads((run_dir / "split.json").read_text())
    split["val_ids"] = split["val_ids"][1:]
    (copy / "split.json").write_text(json.dumps(split))
    dataset = ISICSegmentationDataset()
    dataset.load_isic(data, subset="val", seed=42)
    dataset.prepare()
    with pytest.raises(UserError, match="not in the validation split"):
        run_folders.check_run_split(copy / "mask_rcnn_segmentation_0001.h5", dataset, "val")


# --- 2. a checkpoint of another task ---------------------------------------------------------

def test_checkpoint_of_another_task_is_refused_naming_both(data, first_run, tmp_path):
    _, run_dir = first_run
    checkpoint = run_dir / "mask_rcnn_segmentation_0001.h5"
    result = run_cli("--mode", "investigate", "--task", "attributes", "--dataset", data, "--weights", checkpoint,
                 "--output", tmp_path / "inv")
    one_line_error(result, "segmentation", "attributes")
    assert not (tmp_path / "inv").exists()


def test_run_config_for_compares_name_and_class_count(tmp_path):
    run_dir = tmp_path / "segmentation20260101T000000"
    run_dir.mkdir()
    lesions.SegmentationConfig().save(run_dir / "config.json")
    weights = run_dir / "mask_rcnn_segmentation_0001.h5"
    weights.write_bytes(b"")
    for task in ("attributes", "classification"):
        with pytest.raises(UserError, match=f"segmentation.*{task}|{task}.*segmentation"):
            run_folders.run_config_for(weights, lesions.make_config(task, inference=True), task=task)
    assert run_folders.run_config_for(weights, lesions.make_config("segmentation", inference=True),
                               task="segmentation").NAME == "segmentation"
    # Without config.json, the checkpoint's file name still tells its task.
    bare = tmp_path / "bare" / "mask_rcnn_segmentation_0003.h5"
    bare.parent.mkdir()
    bare.write_bytes(b"")
    with pytest.raises(UserError, match="segmentation.*attributes|attributes.*segmentation"):
        run_folders.run_config_for(bare, lesions.make_config("attributes", inference=True), task="attributes")


# --- 4. run folders never collide; resuming appends ----------------------------------------

def test_second_run_gets_its_own_folder_and_validates_on_the_same_images(data, first_run):
    logs, run_dir = first_run
    before = {p.name: digest(p) for p in run_dir.iterdir() if p.is_file()}
    result = run_cli(*train_args(data, logs, "--weights", "none", "--seed", 8))
    assert result.returncode == 0, result.stderr[-3000:]
    folders = sorted(p for p in logs.iterdir() if p.is_dir())
    assert len(folders) == 2 and run_dir in folders
    (other,) = [p for p in folders if p != run_dir]
    assert {p.name: digest(p) for p in run_dir.iterdir() if p.is_file()} == before
    first_split = json.loads((run_dir / "split.json").read_text())
    assert json.loads((other / "split.json").read_text())["val_ids"] == first_split["val_ids"]


def test_claimed_run_folders_are_distinct_within_one_second(tmp_path):
    import datetime
    from mrcnn.io import run_dirs
    now = datetime.datetime(2026, 12, 1, 17, 5, 9)
    paths = [run_dirs.claim_run_dir(tmp_path, "segmentation", now) for _ in range(3)]
    assert [p.name for p in paths] == ["segmentation20261201T170509", "segmentation20261201T170509_2",
                                       "segmentation20261201T170509_3"]
    assert all(p.is_dir() for p in paths)


def test_one_finder_for_the_last_checkpoint(tmp_path):
    from mrcnn.io import run_dirs
    from mrcnn.config import Config
    from mrcnn.model import MaskRCNN
    for folder, epochs in (("seg20261201T1704", 3), ("seg20261201T170509", 1), ("seg20261201T170509_2", 2),
                           ("seg20261201T170509_10", 1), ("seg20261201T170600", 0), ("segother20261201T1800", 1)):
        (tmp_path / folder).mkdir()
        for e in range(1, epochs + 1):
            (tmp_path / folder / f"mask_rcnn_{folder[:3] if 'other' not in folder else 'segother'}_{e:04d}.h5"
             ).write_bytes(b"")
    want = tmp_path / "seg20261201T170509_10" / "mask_rcnn_seg_0001.h5"
    assert run_dirs.find_last(tmp_path, "seg") == want
    assert run_folders.find_last_checkpoint(tmp_path, "seg") == want
    model = MaskRCNN.__new__(MaskRCNN)
    model.config, model.model_dir = Config(NAME="seg"), str(tmp_path)
    assert pathlib.Path(model.find_last()) == want
    assert run_folders.find_last_checkpoint.__module__ == "isic.modes.run_folders"
    with pytest.raises(FileNotFoundError):
        run_dirs.find_last(tmp_path / "nothing", "seg")


def test_resume_continues_the_run_and_appends(data, first_run):
    """Training from the run's own checkpoint continues its folder: history.csv gets one more
    row, config.json stays as the run wrote it (even with a changed setting), no new folder."""
    logs, run_dir = first_run
    folders = sorted(p.name for p in logs.iterdir())
    config_bytes = (run_dir / "config.json").read_bytes()
    split_bytes = (run_dir / "split.json").read_bytes()
    history = (run_dir / "history.csv").read_text()
    result = run_cli(*train_args(data, logs, "--weights", run_dir / "mask_rcnn_segmentation_0001.h5", "--seed", 7,
                             "--set", "VALIDATION_STEPS=2", epochs=2))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in logs.iterdir()) == folders
    assert (run_dir / "config.json").read_bytes() == config_bytes
    assert (run_dir / "split.json").read_bytes() == split_bytes
    now = (run_dir / "history.csv").read_text()
    assert now.startswith(history) and len(now.splitlines()) == len(history.splitlines()) + 1
    assert (run_dir / "mask_rcnn_segmentation_0002.h5").is_file()


# --- issue 17 item 5: a failed start leaves no run folder ------------------------------------

def test_training_that_fails_before_its_first_step_leaves_no_run_folder(data, tmp_path):
    logs = tmp_path / "logs"
    args = train_args(data, logs, "--weights", "none")
    args[args.index("--layers") + 1] = "no_layer_is_called_this"
    one_line_error(run_cli(*args), "no_layer_is_called_this")
    assert not logs.exists() or not any(logs.iterdir())


# --- 7. partial ImageNet loads ----------------------------------------------------------------

@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """A file with the ResNet-50 backbone's layer names and shapes (as the ImageNet file has)."""
    from mrcnn.io import weights_h5 as weights_io
    from mrcnn.modeling.backbone import backbone_model
    from mrcnn.config import Config
    path = tmp_path_factory.mktemp("imagenet") / "resnet50_notop.h5"
    weights_io.save_weights_h5(backbone_model(Config(BACKBONE="resnet50"), image_shape=(64, 64, 3)), path)
    return path


class BackboneOnly:
    """The part of MaskRCNN that load_start_weights uses, over a bare backbone."""

    def __init__(self, backbone, imagenet_path):
        from mrcnn.modeling.backbone import backbone_model
        from mrcnn.config import Config
        self.keras_model = backbone_model(Config(BACKBONE=backbone), image_shape=(64, 64, 3))
        self.path = imagenet_path

    def get_imagenet_weights(self):
        return str(self.path)

    def load_weights(self, filepath, by_name=True, exclude=None):
        from mrcnn.io import weights_h5 as weights_io
        return weights_io.load_weights_h5(self.keras_model, filepath, by_name=by_name, exclude=exclude)


def test_imagenet_partial_load_is_a_warning_with_counts(imagenet_like, caplog):
    from isic.modes import train as training
    model = BackboneOnly("resnet101", imagenet_like)
    with caplog.at_level(logging.WARNING):
        training.load_start_weights(model, "imagenet", type("C", (), {"BACKBONE": "resnet101"})())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "imagenet" in
                r.getMessage().lower()]
    assert warnings, caplog.text
    # ResNet-101 has 17 more blocks in stage 4 than ResNet-50 (res4g..res4w): 6 layers each.
    assert "skipped 102" in warnings[0] and "loaded" in warnings[0], warnings[0]


def test_imagenet_load_that_loads_nothing_is_refused(imagenet_like):
    from isic.modes import train as training
    model = BackboneOnly("resnet18", imagenet_like)
    with pytest.raises(UserError, match="imagenet.*resnet18|resnet18.*imagenet"):
        training.load_start_weights(model, "imagenet", type("C", (), {"BACKBONE": "resnet18"})())


# --- 8. seeded crop, batch 1 for synthetic inference ------------------------------------------

def test_synthetic_inference_runs_one_image_per_batch():
    assert lesions.make_config("segmentation", synthetic=True, inference=True).IMAGES_PER_GPU == 1
    assert lesions.make_config("segmentation", synthetic=True).IMAGES_PER_GPU == 2
    explicit = lesions.make_config("segmentation", synthetic=True, overrides=[("IMAGES_PER_GPU", 2)],
                                   inference=True)
    assert explicit.IMAGES_PER_GPU == 2


# --- 9. no references to a document the repository does not have --------------------------

def test_no_references_to_spec_sections():
    spec = "SP" + "EC"
    offenders = []
    for path in list(ROOT.rglob("*.py")) + list(ROOT.rglob("*.md")):
        if any(part in (".git", "logs") or part.startswith(".") for part in path.relative_to(ROOT).parts):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if any(ref in line for ref in (spec + " \u00a7", spec + ".md")):
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert offenders == [], offenders


def test_hand_computed_metric_tests_run_without_the_official_scorer(monkeypatch):
    """Importing tests/test_metrics.py must not skip it whole when the scorer is missing."""
    import importlib.util
    for name in ("isic_challenge_scoring", "isic_challenge_scoring.load_image"):
        monkeypatch.setitem(sys.modules, name, None)  # import of it raises ImportError
    spec = importlib.util.spec_from_file_location("metrics_tests_without_scorer", ROOT / "tests" / "test_metrics.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except BaseException as e:  # pytest's Skipped is a BaseException: a skip here is a failure
        pytest.fail(f"tests/test_metrics.py does not import without the scorer: {type(e).__name__}: {e}")
    module.test_task1_helpers_hand_computed()
    module.test_task2_normalisation_hand_computed()
    module.test_task3_confusion_matrix_hand_computed()
    module.test_map_perfect_predictions_score_one()


# --- the run's config.json as a config file, and the runs table ------------------------------------

def test_a_runs_config_json_given_back_reproduces_its_config(data, first_run):
    from mrcnn.config import VALUE_SOURCES_KEY
    _, run_dir = first_run
    saved = json.loads((run_dir / "config.json").read_text())
    sources = saved.pop(VALUE_SOURCES_KEY)
    assert sources["SEED"] == "--seed" and sources["BACKBONE"] == "--set"
    assert sources["STEPS_PER_EPOCH"] == "--steps-per-epoch" and sources["BATCH_SIZE"] == "derived"
    assert sources["LEARNING_MOMENTUM"] == "SegmentationConfig default"
    args = lesions.build_parser().parse_args(["--mode", "train", "--dataset", str(data),
                                              "--config", str(run_dir / "config.json")])
    config, _ = lesions.config_for(args)
    rebuilt = json.loads(json.dumps(config.to_dict()))
    assert rebuilt.keys() == saved.keys()
    for key, value in saved.items():
        assert rebuilt[key] == value, key
    assert config.value_sources["SEED"] == f"config file {run_dir / 'config.json'}"


def test_runs_table_lists_the_runs_with_their_history_and_last_score(first_run, tmp_path, capsys):
    logs, run_dir = first_run
    copy = tmp_path / "logs" / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("*.h5", "investigate_*"))
    (copy / "mask_rcnn_segmentation_0001.h5").write_bytes(b"")
    (copy / "history.csv").write_text("epoch,loss,val_loss\n0,3.0,2.5\n1,2.0,1.5\n2,1.0,1.75\n")
    for name, score, mtime in (("investigate_val", 0.5, 1_000_000), ("investigate_test", 0.625, 2_000_000)):
        (copy / name).mkdir()
        metrics = copy / name / "metrics.json"
        metrics.write_text(json.dumps({"isic": {"overall": score}, "split": name.split("_")[1].title(),
                                       "subset": "all"}))
        os.utime(metrics, (mtime, mtime))
    other = tmp_path / "logs" / "classification20200101T000000"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**json.loads((copy / "config.json").read_text()),
                                                   "NAME": "classification", "LEARNING_RATE": 0.5}))
    assert lesions.main(["--mode", "runs", "--logs", str(tmp_path / "logs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["run", "task", "started", "epochs"]
    assert lines[2].startswith(run_dir.name) and lines[3].startswith(other.name)  # newest first
    row = lines[2]
    assert "1.5000 (2)" in row and "0.6250 test" in row and row.rstrip().endswith("none")
    assert lesions.main(["--mode", "runs", "--logs", str(tmp_path / "logs"), "--task", "classification"]) == 0
    assert run_dir.name not in capsys.readouterr().out

    assert lesions.main(["--mode", "runs", "--logs", str(tmp_path / "logs"), "--compare", run_dir.name,
                         str(other)]) == 0
    out = capsys.readouterr().out
    assert "2 Config value(s) differ" in out
    assert any(line.split()[:3] == ["LEARNING_RATE", json.dumps(json.loads((copy / "config.json").read_text())
                                                                  ["LEARNING_RATE"]), "0.5"] for line in out.splitlines())
    assert any(line.split() == ["2", "2.0000", "1.5000", "-", "-"] for line in out.splitlines())
    assert lesions.main(["--mode", "runs", "--compare", "nope", str(other)]) == 2
