"""Training mode: losses logged per step for each task's class count, a short overfit, run
folders and checkpoints, kill-and-resume through the CLI, checkpoint -> inference model,
two-replica MirroredStrategy, images without instances, non-finite loss stop."""
import csv
import hashlib
import json
import math
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from mrcnn import utils
from mrcnn.engine import trainer as training
from mrcnn.config import LOSS_NAMES, Config
from mrcnn.model import MaskRCNN
from tests.helpers import script_env, set_args, tiny_config, tiny_settings

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOGGED = ("loss",) + LOSS_NAMES


class BlobDataset(utils.Dataset):
    """count images of size x size: one or two discs of classes 1..NUM_CLASSES-1 painted in a
    class colour; with empty_every=k, every k-th image has no instance."""

    def __init__(self, count, num_classes, size=64, empty_every=0, seed=0):
        super().__init__()
        for c in range(1, num_classes):
            self.add_class("blobs", c, f"class{c}")
        self.size, self.empty_every, self.seed = size, empty_every, seed
        for i in range(count):
            self.add_image("blobs", i, None)
        self.prepare()

    def is_empty(self, image_id):
        return bool(self.empty_every) and image_id % self.empty_every == 0

    def load_mask(self, image_id):
        s = self.size
        if self.is_empty(image_id):
            return np.zeros((s, s, 0), bool), np.zeros([0], np.int32)
        rng = np.random.default_rng([self.seed, image_id])
        yy, xx = np.mgrid[:s, :s]
        masks = []
        for _ in range(1 + image_id % 2):
            cy, cx = rng.uniform(0.3, 0.7, 2) * s
            r = rng.uniform(0.12, 0.22) * s
            masks.append((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
        class_ids = rng.integers(1, self.num_classes, len(masks)).astype(np.int32)
        return np.stack(masks, -1), class_ids

    def load_image(self, image_id):
        masks, class_ids = self.load_mask(image_id)
        image = np.full((self.size, self.size, 3), 40, np.uint8)
        for k in range(masks.shape[-1]):
            image[masks[..., k]] = (60 + 150 * class_ids[k] / self.num_classes, 90, 200 - 20 * class_ids[k])
        return image


def file_hash(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def read_history(run_dir):
    with open(run_dir / training.HISTORY_CSV) as f:
        return list(csv.DictReader(f))


def layer_weights(keras_model):
    """{layer name: [arrays]} over every weighted layer, nested models included."""
    out = {}
    for layer in keras_model.layers:
        if isinstance(layer, keras.Model):
            out.update(layer_weights(layer))
        elif layer.weights:
            out[layer.name] = [np.array(w) for w in layer.weights]
    return out


def check_logged_losses(history, weights):
    """Every loss logged per epoch, finite, train and val; the total is the weighted sum of
    the five plus the (small, positive) L2 weight decay."""
    for name in LOGGED:
        for key in (name, "val_" + name):
            assert key in history, key
            assert all(math.isfinite(v) for v in history[key]), (key, history[key])
    for epoch in range(len(history["loss"])):
        weighted = sum(weights[n] * history[n][epoch] for n in LOSS_NAMES)
        decay = history["loss"][epoch] - weighted
        assert 0 < decay < 0.05, (epoch, history["loss"][epoch], weighted)


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory):
    """Task 1's class count: 4 images, all layers, 3 epochs of 5 steps."""
    keras.utils.set_random_seed(0)
    logs = tmp_path_factory.mktemp("logs")
    config = tiny_config(STEPS_PER_EPOCH=5)
    dataset = BlobDataset(4, config.NUM_CLASSES)
    model = MaskRCNN("training", config, str(logs))
    traces = TraceRecorder()
    history = model.train(dataset, dataset, learning_rate=0.02, epochs=3, layers="all", verbose=0,
                          custom_callbacks=[traces])
    return model, history.history, config, traces.counts


class TraceRecorder(keras.callbacks.Callback):
    """How many times train_step had been traced after each training batch."""

    def __init__(self):
        super().__init__()
        self.counts = []

    def on_train_batch_end(self, batch, logs=None):
        self.counts.append(self.model.train_step_traces)


def test_two_classes_losses_logged_and_loss_halves(overfit_run):
    model, history, config, traces = overfit_run
    check_logged_losses(history, config.LOSS_WEIGHTS)
    assert len(history["loss"]) == 3
    assert history["loss"][-1] <= 0.5 * history["loss"][0], history["loss"]
    # Traced on the first step only (tf.function traces twice when it creates variables).
    assert len(traces) == 15 and traces[0] <= 2 and traces[-1] == traces[0], traces


def test_run_folder_has_config_checkpoints_events_and_history(overfit_run):
    model, history, config, _ = overfit_run
    run_dir = pathlib.Path(model.log_dir)
    assert run_dir.parent == pathlib.Path(model.model_dir) and run_dir.name.startswith("tiny")
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["NUM_CLASSES"] == 2 and saved["BACKBONE"] == "resnet18" and saved["STEPS_PER_EPOCH"] == 5
    names = sorted(p.name for p in run_dir.glob("*.h5"))
    assert names == [f"mask_rcnn_tiny_{e:04d}.h5" for e in (1, 2, 3)]
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    rows = read_history(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert np.isclose(float(rows[-1]["mrcnn_mask_loss"]), history["mrcnn_mask_loss"][-1], rtol=1e-5)
    events = list(run_dir.rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard events"
    assert model.epoch == 3 and model.find_last() == str(run_dir / "mask_rcnn_tiny_0003.h5")


def test_checkpoint_loads_into_inference_model_bit_exact(overfit_run, tmp_path):
    model, _, config, _ = overfit_run
    checkpoint = model.find_last()
    inference = MaskRCNN("inference", tiny_config(IMAGES_PER_GPU=1), str(tmp_path))
    inference.load_weights(checkpoint, by_name=True)
    trained = layer_weights(model.keras_model)
    loaded = layer_weights(inference.keras_model)
    assert len(loaded) > 50
    for name, arrays in loaded.items():
        assert name in trained, name
        for a, b in zip(arrays, trained[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)
    # Matterport's resume semantics: the checkpoint's run name (under this model's model_dir) and epoch.
    assert inference.epoch == 3
    assert os.path.basename(inference.log_dir) == os.path.basename(model.log_dir)
    result = inference.detect([BlobDataset(4, 2).load_image(1)])[0]
    assert result["masks"].shape[:2] == (64, 64)


def test_a_learning_rate_drop_keeps_the_compiled_step_and_a_new_layer_set_retraces(overfit_run):
    """A stage that trains the same layers (a schedule's learning-rate drop) reuses the traced
    train_step and the optimizer (momentum, step count); other layers recompile. Runs after
    the tests above that read the fixture's run."""
    model, _, config, traces = overfit_run
    optimizer = model.keras_model.optimizer
    dataset = BlobDataset(4, config.NUM_CLASSES)
    same = TraceRecorder()
    model.train(dataset, dataset, learning_rate=0.002, epochs=4, layers="all", verbose=0, custom_callbacks=[same])
    assert same.counts == [traces[-1]] * config.STEPS_PER_EPOCH
    assert model.keras_model.optimizer is optimizer and int(optimizer.iterations) == 4 * config.STEPS_PER_EPOCH
    assert float(optimizer.learning_rate) == pytest.approx(0.002)
    other = TraceRecorder()
    model.train(dataset, dataset, learning_rate=0.001, epochs=5, layers="heads", verbose=0, custom_callbacks=[other])
    assert other.counts[0] > traces[-1] and model.keras_model.optimizer is not optimizer
    assert float(model.keras_model.optimizer.learning_rate) == pytest.approx(0.001)


@pytest.mark.parametrize("num_classes", [6, 8])
def test_task_class_counts_train_with_losses_logged(num_classes, tmp_path):
    """Task 2 (6 classes, half the images without instances, kept) and Task 3 (8 classes,
    non-default LOSS_WEIGHTS, mixed_bfloat16)."""
    keras.utils.set_random_seed(1)
    task2 = num_classes == 6
    weights = dict(Config.LOSS_WEIGHTS)
    if not task2:
        weights.update(rpn_bbox_loss=0.5, mrcnn_mask_loss=2.0)
    config = tiny_config(NUM_CLASSES=num_classes, KEEP_EMPTY_IMAGES=task2, LOSS_WEIGHTS=weights, STEPS_PER_EPOCH=2,
                         MIXED_PRECISION=None if task2 else "mixed_bfloat16")
    dataset = BlobDataset(8, num_classes, empty_every=2 if task2 else 0)
    model = MaskRCNN("training", config, str(tmp_path))
    history = model.train(dataset, dataset, learning_rate=0.01, epochs=1, layers="heads", verbose=0).history
    check_logged_losses(history, weights)
    assert model.keras_model.get_layer("mrcnn_class_logits").layer.units == num_classes
    assert model.keras_model.get_layer("fpn_c5p5").compute_dtype == ("float32" if task2 else "bfloat16")
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored after the build
    stats = model.train_stats
    assert stats["empty_skipped"] == 0
    if task2:
        assert stats["empty_served"] > 0
        # Over one pass of the dataset every empty image is in a batch, none replaced.
        feed, _ = training.make_feeds(model, dataset, dataset, workers=0)
        served = [b for i in range(len(dataset.image_ids) // config.BATCH_SIZE)
                  for b in feed[i][0][4].any(axis=1)]
        expected_empty = sum(dataset.is_empty(i) for i in dataset.image_ids)
        assert expected_empty == 4 and served.count(False) == expected_empty
        assert feed.n_empty_skipped == 0 and feed.n_empty_served == expected_empty


def test_heads_layers_freeze_the_backbone(tmp_path):
    config = tiny_config()
    model = MaskRCNN("training", config, str(tmp_path))
    keras_model = model.keras_model
    training.set_trainable(keras_model, training.layer_regex("heads"))
    names = {w.path.split("/")[0] for w in keras_model.trainable_weights}
    assert "rpn_conv_shared" in names and "mrcnn_mask" in names and "fpn_c5p5" in names
    assert not [n for n in names if n.startswith("r18_")]
    training.set_trainable(keras_model, training.layer_regex("4+"))
    names = {w.path.split("/")[0] for w in keras_model.trainable_weights}
    assert "r18_res4a_branch2a" in names and "r18_res5a_branch2a" in names
    assert "r18_res3a_branch2a" not in names and "r18_conv1" not in names
    # BatchNorm keeps its moving statistics frozen (TRAIN_BN False): they are never trainable.
    assert not [w for w in keras_model.trainable_weights if "moving" in w.path]


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    """The guard and checkpoint callbacks on a small model whose loss turns NaN in epoch 2."""

    class Toy(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1, name="dense")
            self.tracker = keras.metrics.Mean(name="loss")
            self.steps = keras.Variable(0.0, trainable=False)

        @property
        def metrics(self):
            return [self.tracker]

        def call(self, x):
            return self.dense(x)

        def train_step(self, data):
            self.steps.assign_add(1.0)
            x = data[0] if isinstance(data, tuple) else data
            value = keras.ops.mean(self(x)) * 0.0 + keras.ops.where(self.steps > 4, np.nan, 1.0)
            self.tracker.update_state(value)
            return {"loss": self.tracker.result()}

    toy = Toy()
    toy.compile(optimizer="sgd")
    x = np.ones((8, 3), np.float32)
    pattern = str(tmp_path / "mask_rcnn_toy_{epoch:04d}.h5")
    guard = training.NonFiniteGuard()
    checkpoint = training.EpochCheckpoint(pattern, guard)
    history_csv = training.CountingCSVLogger(str(tmp_path / "history.csv"), guard)
    toy.fit(x, batch_size=2, epochs=5, callbacks=[guard, checkpoint, history_csv], verbose=0)
    assert guard.failure[:3] == (2, 1, "loss")
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["mask_rcnn_toy_0001.h5"]
    assert len(read_history(tmp_path)) == 1


def test_mirrored_strategy_two_replicas_combine_gradients():
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "mirrored_step.py"), "/tmp/mirrored_logs_unused"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=script_env())
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["update_max"] > 0
    tolerance = 1e-3 * result["update_max"]
    assert result["error_vs_mean_gradient"] < tolerance, result
    # Either replica's own gradient (or the sum) alone does not explain the update.
    for key in ("error_vs_replica0_gradient", "error_vs_replica1_gradient", "error_vs_sum_gradient"):
        assert result[key] > 10 * result["error_vs_mean_gradient"], result


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory):
    from isic import synthetic
    root = tmp_path_factory.mktemp("isic_synthetic")
    synthetic.generate_dataset(root, count=8, image_size=(64, 64), seed=0, progress=False)
    return root


# The tiny network through the command line, one image per step, no augmentation.
CLI_SETTINGS = tiny_settings(IMAGES_PER_GPU=1, VALIDATION_STEPS=1, AUGMENTATION="none")


def cli_train(dataset, logs, *extra, epochs=3):
    args = [sys.executable, str(ROOT / "lesions.py"), "--mode", "train", "--dataset", str(dataset),
            "--logs", str(logs), "--epochs", str(epochs), "--steps-per-epoch", "20", "--layers", "all"]
    return args + set_args(CLI_SETTINGS) + list(extra)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.timeout(1800)  # about 1 min of CPU per worker; far longer on a shared, loaded machine
def test_multi_worker_two_processes_end_identical_and_only_the_chief_writes(synthetic_folder, tmp_path):
    """Two workers on 127.0.0.1 (TF_CONFIG, MultiWorkerMirroredStrategy) train the synthetic
    config for 2 steps, each seeded differently: the strategy must broadcast and all-reduce."""
    hosts = [f"127.0.0.1:{port}" for port in free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        env = script_env(TF_CONFIG=json.dumps(tf_config))
        args = [sys.executable, str(ROOT / "tests" / "multi_worker_train.py"), str(synthetic_folder),
                str(tmp_path / f"logs{index}"), str(tmp_path / f"weights{index}.npz")]
        procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    try:
        outputs = [p.communicate(timeout=1700) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    chief, worker = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    assert (chief["chief"], worker["chief"]) == (True, False)
    assert chief["replicas"] == worker["replicas"] == 2
    assert chief["global_batch"] == 2  # IMAGES_PER_GPU 1 x GPU_COUNT 1 x 2 workers
    assert chief["epoch"] == worker["epoch"] == 1
    assert chief["loss"] == worker["loss"] and math.isfinite(chief["loss"][0])

    with np.load(tmp_path / "weights0.npz") as a, np.load(tmp_path / "weights1.npz") as b:
        assert len(a.files) > 100
        for key in a.files:
            assert np.array_equal(a[key], b[key]), key

    (run_dir,) = (tmp_path / "logs0").iterdir()
    names = {p.name for p in run_dir.iterdir()}
    assert {"mask_rcnn_segmentation_0001.h5", "config.json", training.HISTORY_CSV, "train"} <= names
    assert len(read_history(run_dir)) == 1
    assert not (tmp_path / "logs1").exists() or not any((tmp_path / "logs1").rglob("*"))


def test_kill_mid_epoch_and_resume_with_weights_last(synthetic_folder, tmp_path):
    """Event-driven: the run (too many epochs to end on its own) is killed as soon as its first
    checkpoint appears, whatever the machine's speed; the resume continues from the last
    checkpoint that was complete."""
    logs = tmp_path / "logs"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cli_train(synthetic_folder, logs, "--weights", "none", epochs=1000), cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 900  # a safety net for a loaded machine, not a speed check
    first = None
    try:
        while time.time() < deadline and proc.poll() is None and first is None:
            found = list(logs.glob("segmentation*/mask_rcnn_segmentation_0001.h5"))
            first = found[0] if found else None
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert first is not None, proc.stderr.read().decode()[-3000:]
    run_dir = first.parent
    kept = sorted(p.name for p in run_dir.glob("*.h5"))
    done = len(kept)
    assert kept == [f"mask_rcnn_segmentation_{e:04d}.h5" for e in range(1, done + 1)]
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    digest = file_hash(first)
    probe = MaskRCNN("inference", tiny_config(IMAGES_PER_GPU=1, NUM_CLASSES=2), str(tmp_path))
    report = probe.load_weights(str(first))
    assert report is not None

    out = subprocess.run(cli_train(synthetic_folder, logs, "--weights", "last", epochs=done + 2), cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Re-starting from epoch {done}" in out.stderr
    assert [p.name for p in logs.iterdir()] == [run_dir.name]
    assert sorted(p.name for p in run_dir.glob("*.h5")) == [f"mask_rcnn_segmentation_{e:04d}.h5"
                                                            for e in range(1, done + 3)]
    assert file_hash(first) == digest
    epochs = [int(r["epoch"]) for r in read_history(run_dir)]
    assert epochs == sorted(set(epochs)) and epochs[-2:] == [done, done + 1]
