"""Export mode (issue 15): the SavedModel runs in a TensorFlow-only process and agrees with
detect() on the same weights; the in-graph molding matches the NumPy code; the card and
`--mode predict --weights DIR` work."""
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import lesions
from isic.modes import export as isic_export
from isic import layout
from isic.outputs import deliverables as outputs
from isic.outputs import refinement
from mrcnn import utils
from mrcnn.modeling import anchors
from mrcnn.io import saved_model as export
from mrcnn.model import MaskRCNN
from tests.helpers import mask_iou, tiny_config, tiny_task_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
REAL_IMAGE = "ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg"  # 767 x 1022
# The tests' tiny network at 128 x 128 on the synthetic CPU config: three exports stay within
# about a minute on 2 cores.
EXPORT_SETTINGS = dict(IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128, DETECTION_MAX_INSTANCES=10)

# Runs with `python -I` from an empty folder: no project code on sys.path, TensorFlow only.
LOADER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import tensorflow as tf
    spec = json.load(open(sys.argv[1]))
    found = {}
    for task, directory in spec["models"].items():
        started = time.perf_counter()
        serve = tf.saved_model.load(directory).signatures
        load_seconds = time.perf_counter() - started
        for k, path in enumerate(spec["images"]):
            out = serve["serving_default"](image=tf.constant(np.load(path)))
            for key, value in out.items():
                found[f"{task}/{k}/{key}"] = value.numpy()
        png = open(spec["png"], "rb").read()
        for key, value in serve["serving_bytes"](image_bytes=tf.constant(png)).items():
            found[f"{task}/bytes/{key}"] = value.numpy()
        found[f"{task}/load_seconds"] = np.array(load_seconds)
    np.savez(spec["result"], **found)
    project = [m for m in sys.modules if m.split(".")[0] in ("mrcnn", "isic", "lesions")]
    print(json.dumps({"project_modules": project, "sys_path": sys.path}))
""")


@pytest.fixture(scope="module")
def images(isic_sample):
    """Three sizes: a real non-square photo (shrunk), a non-square synthetic one that is
    enlarged (the zero-border resize path), and a square one at scale 0.5."""
    from isic import synthetic
    rng = np.random.default_rng(3)
    real = np.asarray(Image.open(isic_sample / REAL_IMAGE).convert("RGB"))
    return [real, synthetic.render_sample(rng, size=(90, 120))[0], synthetic.render_sample(rng, size=256)[0]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, images):
    """Per task: random-but-seeded resnet18 weights saved as a checkpoint, exported, its
    detect() results; then one fresh `python -I` process runs all three SavedModels."""
    root = tmp_path_factory.mktemp("export")
    runs = {}
    for seed, task in enumerate(layout.TASKS):
        keras.utils.set_random_seed(seed)
        config = tiny_task_config(task, synthetic=True, inference=True, **EXPORT_SETTINGS)
        model = MaskRCNN("inference", config, str(root / "logs"))
        checkpoint = root / f"{task}.h5"
        model.save_weights(str(checkpoint))
        directory = root / task
        card = isic_export.export_model(model, task, directory, checkpoint,
                                        [(f"image{k}", image) for k, image in enumerate(images)])
        runs[task] = {"dir": directory, "card": card, "checkpoint": checkpoint,
                      "detect": model.detect(images), "config": model.config}
    arrays = []
    for k, image in enumerate(images):
        arrays.append(str(root / f"image{k}.npy"))
        np.save(arrays[-1], image)
    png = root / "image1.png"
    Image.fromarray(images[1]).save(png)
    spec = {"models": {t: str(r["dir"]) for t, r in runs.items()}, "images": arrays, "png": str(png),
            "result": str(root / "served.npz")}
    (root / "spec.json").write_text(json.dumps(spec))
    empty = root / "cwd"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-I", "-c", LOADER, str(root / "spec.json")], cwd=empty, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    served = dict(np.load(spec["result"]))
    return {"runs": runs, "served": served, "report": report, "images": images}


def served_of(exported, task, key):
    return {name: exported["served"][f"{task}/{key}/{name}"]
            for name in ("boxes", "class_ids", "scores", "masks", "class_probs", isic_export.DELIVERABLE_OUTPUT[task])}


# --- The SavedModel in a TensorFlow-only process -----------------------------------------------

def test_fresh_process_imports_no_project_code(exported):
    report = exported["report"]
    assert report["project_modules"] == []
    assert str(ROOT) not in report["sys_path"] and "" not in report["sys_path"]


@pytest.mark.parametrize("task", layout.TASKS)
def test_exported_model_agrees_with_detect(exported, task):
    run = exported["runs"][task]
    total = 0
    for k, image in enumerate(exported["images"]):
        ref, got = run["detect"][k], served_of(exported, task, k)
        n = len(ref["scores"])
        total += n
        assert len(got["scores"]) == n, f"image {k}: {len(got['scores'])} detections, detect() gave {n}"
        assert got["masks"].shape == (n,) + image.shape[:2] and got["masks"].dtype == np.uint8
        assert set(np.unique(got["masks"])) <= {0, 1}
        np.testing.assert_array_equal(got["class_ids"], ref["class_ids"])
        assert np.abs(got["boxes"].astype(int) - ref["rois"]).max(initial=0) <= 1
        np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-4)
        np.testing.assert_allclose(got["class_probs"], ref["class_probs"], atol=1e-4)
        for i in range(n):
            assert mask_iou(got["masks"][i], ref["masks"][..., i]) >= 0.99
        expected = outputs.task_deliverable(task, ref, image.shape)
        deliverable = got[isic_export.DELIVERABLE_OUTPUT[task]]
        if task == "segmentation":
            assert deliverable.shape == image.shape[:2] and mask_iou(deliverable, expected) >= 0.99
        elif task == "attributes":
            assert deliverable.shape == (len(layout.ATTRIBUTES),) + image.shape[:2]
            for a, name in enumerate(layout.ATTRIBUTES):
                assert mask_iou(deliverable[a], expected[name]) >= 0.99
        else:
            assert deliverable.shape == (len(layout.DIAGNOSES),)
            np.testing.assert_allclose(deliverable, expected, atol=1e-4)
    assert total > 0, "random weights gave no detection at all: the comparison would be empty"


@pytest.mark.parametrize("task", layout.TASKS)
def test_bytes_signature_equals_image_signature(exported, task):
    from_bytes, from_array = served_of(exported, task, "bytes"), served_of(exported, task, 1)
    for name, value in from_array.items():
        np.testing.assert_array_equal(from_bytes[name], value)


def test_model_card_records_what_was_exported(exported):
    for task, run in exported["runs"].items():
        card = export.read_card(run["dir"])
        assert card == json.loads(json.dumps(run["card"]))
        assert card["task"] == task and card["class_names"] == ["BG"] + list(layout.CLASS_NAMES[task])
        assert card["config"] == run["config"].to_dict()
        assert card["source_checkpoint"] == str(run["checkpoint"])
        assert card["source_checkpoint_sha256"] == hashlib.sha256(run["checkpoint"].read_bytes()).hexdigest()
        assert card["project_version"] and card["size_bytes"] > 1e6
        agreement = card["agreement_with_detect"]
        assert agreement["images"] == 3 and agreement["same_count_all"]
        assert agreement["max_box_px"] <= 1 and agreement["max_score_diff"] <= 1e-4
        assert agreement["min_mask_iou"] >= 0.99
        assert agreement["detections_per_image"] == [len(r["scores"]) for r in run["detect"]]
        if task == "segmentation":
            assert "unrefined" in card["task1_postprocessing"]["in_graph"]
            assert card["task1_postprocessing"]["run_config"]["TASK1_MASK_REFINEMENT"] == "none"
        else:
            assert card["task1_postprocessing"] is None


def test_saved_model_cli_shows_both_signatures(exported):
    cli = pathlib.Path(sys.executable).with_name("saved_model_cli")
    shown = subprocess.run([str(cli), "show", "--dir", str(exported["runs"]["segmentation"]["dir"]), "--all"],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    text = shown.stdout
    assert "signature_def['serving_default']" in text and "signature_def['serving_bytes']" in text
    for name in ("inputs['image'] tensor_info", "dtype: DT_UINT8", "shape: (-1, -1, 3)",
                 "inputs['image_bytes'] tensor_info", "outputs['lesion_mask']", "outputs['masks']"):
        assert name in text


# --- predict --weights DIR ----------------------------------------------------------------------

def test_predict_runs_an_exported_model_and_refines_on_top(exported, tmp_path):
    run = exported["runs"]["segmentation"]
    png = tmp_path / "ISIC_0000001.png"
    Image.fromarray(exported["images"][1]).save(png)
    code = lesions.main(["--mode", "predict", "--dataset", "synthetic", "--weights", str(run["dir"]),
                         "--image", str(png), "--output", str(tmp_path / "out"),
                         "--set", "TASK1_MASK_REFINEMENT=fill"])
    assert code == 0
    written = np.asarray(Image.open(tmp_path / "out" / "ISIC_0000001_segmentation.png")) > 128
    unrefined = exported["served"]["segmentation/1/lesion_mask"].astype(bool)
    np.testing.assert_array_equal(written, refinement.largest_component_filled(unrefined))
    summary = json.loads((tmp_path / "out" / "ISIC_0000001.json").read_text())
    assert len(summary["detections"]) == len(run["detect"][1]["scores"])


def test_predict_refuses_an_export_of_another_task(exported, tmp_path, capsys):
    png = tmp_path / "ISIC_0000001.png"
    Image.fromarray(exported["images"][1]).save(png)
    code = lesions.main(["--mode", "predict", "--task", "attributes", "--dataset", "synthetic",
                         "--weights", str(exported["runs"]["segmentation"]["dir"]), "--image", str(png)])
    assert code == 2
    assert "exported for task 'segmentation'" in capsys.readouterr().err


def test_exported_model_cannot_be_trained_or_reexported(exported, tmp_path, capsys):
    from isic.modes import run_folders
    from isic.errors import UserError
    folder = str(exported["runs"]["segmentation"]["dir"])
    assert run_folders.resolve_weights(folder, "investigate", True, "segmentation", tmp_path) == pathlib.Path(folder)
    with pytest.raises(UserError, match="needs an .h5 checkpoint"):
        run_folders.resolve_weights(folder, "train", True, "segmentation", tmp_path)
    assert lesions.main(["--mode", "export", "--dataset", "synthetic", "--weights", folder,
                         "--output", str(tmp_path / "out")]) == 2
    assert "needs an .h5 checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_cli_errors_leave_nothing_behind(tmp_path, capsys):
    assert lesions.main(["--mode", "export", "--dataset", "synthetic"]) == 2
    assert "--mode export needs --output" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"")
    model = None
    with pytest.raises(Exception, match="not empty"):
        isic_export.export_model(model, "segmentation", busy, weights, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "w.h5"]
    assert (busy / "keep.txt").read_text() == "mine"
    # The CLI refuses the busy folder before it builds a model.
    assert lesions.main(["--mode", "export", "--dataset", "synthetic", "--weights", "none",
                         "--output", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err


# --- In-graph molding vs NumPy (no model) -----------------------------------------------------

def test_in_graph_anchors_and_mask_pasting_match_numpy():
    config = tiny_config(NUM_CLASSES=3, IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128,
                         IMAGES_PER_GPU=1)
    for shape in [(192, 256), (128, 320)]:
        np.testing.assert_array_equal(export.pyramid_anchors_graph(config, *shape).numpy(),
                                      anchors.pyramid_anchors(config, shape))
    mask = np.random.default_rng(1).random((28, 28)).astype(np.float32)
    for box in [(10, 20, 50, 47), (-5, -3, 30, 40), (90, 100, 130, 170)]:
        expected = utils.unmold_mask(mask, box, (120, 160))
        got = export.paste_mask(tf.constant(mask), tf.constant(box, tf.int32), 120, 160).numpy()
        assert got.dtype == np.uint8 and (got.astype(bool) != expected).sum() <= 2
