"""Training speed at 512 px: seconds per Mask R-CNN training step (resnet50 and resnet101,
batch 1 and 2), the bare ResNet-50 training step in the same run, and the data pipeline alone
in images per second (threads vs processes), with their ratio to the step time.

Each model trains on synthetic lesion images written as JPEG/PNG files (decoding, resizing,
augmentation and RPN targets all run in the pipeline). Step times: the median over
--steps steps after --warmup steps (the first includes tracing). Prints a Markdown table and
writes JSON.

usage: python bench/train_speed.py [--backbones resnet50 resnet101] [--batches 1 2] [--steps 5]
                                   [--json bench/train_speed.json]
"""
import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from isic import synthetic  # noqa: E402
from mrcnn import training, utils  # noqa: E402
from mrcnn.augment import default_augmentation  # noqa: E402
from mrcnn.backbone import backbone_model  # noqa: E402
from mrcnn.config import Config  # noqa: E402
from mrcnn.model import MaskRCNN  # noqa: E402

SIZE = 512


class LesionFiles(utils.Dataset):
    """Synthetic lesions written as 600x450 JPEG images and PNG masks (ISIC-like files)."""

    def __init__(self, folder, count=8):
        super().__init__()
        self.add_class("lesion", 1, "lesion")
        for i in range(count):
            image, mask, _, _ = synthetic.render_sample(np.random.default_rng([7, i]), size=(450, 600))
            path = os.path.join(folder, f"{i}.jpg")
            cv2.imwrite(path, image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(os.path.join(folder, f"{i}.png"), mask)
            self.add_image("lesion", i, path)
        self.prepare()

    def load_image(self, image_id):
        return cv2.imread(self.image_info[image_id]["path"])[..., ::-1].copy()

    def load_mask(self, image_id):
        mask = cv2.imread(self.image_info[image_id]["path"][:-4] + ".png", cv2.IMREAD_GRAYSCALE) > 0
        return mask[..., np.newaxis], np.array([1], np.int32)


def bench_config(backbone, batch, steps):
    """ISIC Task 1 settings (lesions.py SegmentationConfig) at 512 px."""
    return Config(NAME="speed", NUM_CLASSES=2, BACKBONE=backbone, IMAGES_PER_GPU=batch, IMAGE_MIN_DIM=SIZE,
                  IMAGE_MAX_DIM=SIZE, TRAIN_ROIS_PER_IMAGE=128, MAX_GT_INSTANCES=20, STEPS_PER_EPOCH=steps,
                  VALIDATION_STEPS=1)


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def model_step(backbone, batch, dataset, warmup, steps, logs):
    keras.backend.clear_session()
    config = bench_config(backbone, batch, warmup + steps)
    start = time.perf_counter()
    model = MaskRCNN("training", config, logs)
    build = time.perf_counter() - start
    timer = StepTimer()
    model.train(dataset, dataset, learning_rate=0.001, epochs=1, layers="all", verbose=0,
                augmentation=default_augmentation("task1", seed=0), custom_callbacks=[timer])
    return {"backbone": backbone, "batch": batch, "build_s": round(build, 1),
            "first_step_s": round(timer.times[0], 1),
            "step_s": round(float(np.median(timer.times[warmup:])), 3),
            "params": int(model.keras_model.count_params())}


def bare_resnet50_step(batch, warmup, steps):
    """ResNet-50 backbone (BatchNorm frozen, as in Mask R-CNN) with a mean-of-C5 loss, SGD."""
    keras.backend.clear_session()
    config = bench_config("resnet50", batch, 1)
    model = backbone_model(config, (SIZE, SIZE, 3))
    optimizer = keras.optimizers.SGD(0.001, momentum=0.9)
    images = tf.random.uniform((batch, SIZE, SIZE, 3), -100, 100)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(x, training=True)[-1])
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        return loss

    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step(images).numpy()
        times.append(time.perf_counter() - start)
    return round(float(np.median(times[warmup:])), 3)


def pipeline_rate(dataset, workers, use_multiprocessing, batches=12):
    """Images per second of the training feed alone (loading, resizing, augmentation, targets)."""
    config = bench_config("resnet50", 2, batches)
    feed = training.TrainingFeed(dataset, config, shuffle=True, augmentation=default_augmentation("task1", seed=0),
                                 steps=batches, workers=workers, use_multiprocessing=use_multiprocessing)
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    adapter = PyDatasetAdapter(feed, shuffle=False)
    adapter.on_epoch_begin()
    start = time.perf_counter()
    count = sum(b[0][0].shape[0] for b in adapter.get_numpy_iterator())
    seconds = time.perf_counter() - start
    adapter.on_epoch_end()
    return round(count / seconds, 2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "resnet101"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "train_speed.json"))
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="train-speed-")
    logs = os.path.join(folder, "logs")
    dataset = LesionFiles(folder)

    pipeline = {f"{'processes' if mp else 'threads'}={w}": pipeline_rate(dataset, w, mp)
                for w, mp in ((0, False), (1, False), (2, False), (2, True))}
    rows = [model_step(b, n, dataset, args.warmup, args.steps, logs) for b in args.backbones for n in args.batches]
    bare = {n: bare_resnet50_step(n, args.warmup, args.steps) for n in args.batches}

    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"Keras {keras.__version__}; {SIZE}x{SIZE}, median of {args.steps} steps after {args.warmup}\n")
    print("| backbone | batch | s/step | s/image | first step s | bare ResNet-50 step s | data pipeline s/batch (2 threads) |")
    print("|---|---|---|---|---|---|---|")
    rate = pipeline["threads=2"]
    for r in rows:
        print(f"| {r['backbone']} | {r['batch']} | {r['step_s']} | {r['step_s'] / r['batch']:.3f} | "
              f"{r['first_step_s']} | {bare[r['batch']]} | {r['batch'] / rate:.3f} |")
    print("\nData pipeline alone (images/s): " + ", ".join(f"{k}: {v}" for k, v in pipeline.items()))
    out = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                       "tensorflow": tf.__version__, "keras": keras.__version__},
           "size": SIZE, "model_steps": rows, "bare_resnet50_step_s": bare, "pipeline_images_per_s": pipeline,
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(f"\nwrote {args.json}")
    return out


if __name__ == "__main__":
    main()
