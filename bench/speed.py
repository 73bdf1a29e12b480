"""Speed and memory of the engine (the tables of docs/benchmarks.md), in one run: prints Markdown tables, writes JSON.

detect: for each config set (task1: lesions.SegmentationConfig; coco: Matterport's default
  Config with 81 classes and 100 detection slots), backbone and size, one subprocess (so its
  peak RSS belongs to that configuration) measures on a seeded random RGB image:
  detect() s/image (warm-up, then the median of --repeats; molding and unmolding included)
  with the mask head on surviving detections (DETECT_MASKS_ON_SURVIVORS, the default) and
  with the plain path, the bare backbone forward pass at the same size, their ratio, the
  number of detections, the stages (backbone+FPN+RPN, everything up to the detections, the
  whole tf.function) and the peak RSS. Random weights fill every detection slot; a trained
  model keeps a few, so both paths are also timed with --few detections (class logits
  softened, threshold at the few-th score).
train: s/step at 512 for each backbone and batch (the Task 1 config, synthetic lesion files
  through the real feed and augmentation), the bare ResNet-50 training step in the same
  process, their ratio; and the quick start's config (lesions.py --dataset synthetic:
  resnet18, 256 px, batch 2) beside the training step of its bare ResNet-18 backbone at the
  same size and batch.
data: the training feed alone in images/s (threads and processes), and its ratio to what
  the measured training steps consume.
export: the Task 1 model exported as a SavedModel (isic.modes.export) and timed, in one subprocess,
  against detect() on the same 450x600 image (molding and unmolding included on both sides),
  with the bare backbone beside it; export time, load time and size of the SavedModel.

usage: python bench/speed.py [--only detect train data export] [--sets task1 coco]
                             [--backbones resnet50 resnet101] [--sizes 512 1024]
                             [--repeats 5] [--few 3] [--batches 1 2] [--steps 5]
                             [--no-synthetic] [--json bench/speed.json]
Random weights: detection counts depend on them (reported per row).
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import mrcnn  # noqa: E402,F401  before TensorFlow loads: its CPU allocator (mrcnn/__init__.py)

TRAIN_SIZE = 512
SETS = ("task1", "coco")


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median_seconds(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# --- Configs -----------------------------------------------------------------------------

def detect_config(config_set, backbone, size, **overrides):
    """task1: the product's Task 1 config; coco: Matterport's defaults with 81 classes. One
    image per batch, BACKBONE and size overridden."""
    from mrcnn.config import Config
    values = dict(BACKBONE=backbone, GPU_COUNT=1, IMAGES_PER_GPU=1, IMAGE_MIN_DIM=size, IMAGE_MAX_DIM=size)
    values.update(overrides)
    if config_set == "task1":
        import lesions
        return lesions.SegmentationConfig(**values)
    return Config(NAME="coco", NUM_CLASSES=81, **values)


def train_config(backbone, batch, steps):
    import lesions
    return lesions.SegmentationConfig(BACKBONE=backbone, IMAGES_PER_GPU=batch, IMAGE_MIN_DIM=TRAIN_SIZE,
                                      IMAGE_MAX_DIM=TRAIN_SIZE, STEPS_PER_EPOCH=steps, VALIDATION_STEPS=1)


def config_summary(config):
    return {"NUM_CLASSES": config.NUM_CLASSES, "POST_NMS_ROIS_INFERENCE": config.POST_NMS_ROIS_INFERENCE,
            "DETECTION_MAX_INSTANCES": config.DETECTION_MAX_INSTANCES,
            "DETECTION_MIN_CONFIDENCE": config.DETECTION_MIN_CONFIDENCE, "PRE_NMS_LIMIT": config.PRE_NMS_LIMIT,
            "TRAIN_ROIS_PER_IMAGE": config.TRAIN_ROIS_PER_IMAGE}


# --- detect (one configuration per subprocess) -------------------------------------------

def detect_worker(config_set, backbone, size, repeats, few):
    """Measure one configuration in this process; returns a JSON-ready dict."""
    import keras
    import tensorflow as tf
    from mrcnn.modeling.backbone import backbone_model
    from mrcnn.model import MaskRCNN

    keras.utils.set_random_seed(0)
    config = detect_config(config_set, backbone, size)
    image = np.random.default_rng(0).integers(0, 256, size=(size, size, 3)).astype(np.uint8)
    start = time.perf_counter()
    model = MaskRCNN("inference", config, os.path.join(tempfile.gettempdir(), "mrcnn_speed_logs"))
    build_s = time.perf_counter() - start
    row = {"set": config_set, "backbone": backbone, "size": size, "build_s": round(build_s, 2),
           "params": int(model.keras_model.count_params()), "config": config_summary(config)}

    row["detect_s"] = median_seconds(lambda: model.detect([image]), repeats)
    row["detections"] = int(len(model.detect([image])[0]["class_ids"]))
    row["peak_rss_mb"] = round(peak_rss_mb(), 1)

    # The stages, through tf.functions of sub-models sharing keras_model's layers.
    molded, metas, _ = model.mold_inputs([image])
    anchors = model.get_anchors(molded.shape[1:])[np.newaxis]
    inputs = [tf.constant(molded), tf.constant(metas), tf.constant(anchors, tf.float32)]
    row["predict_s"] = median_seconds(lambda: model._predict(molded, metas, anchors), repeats)
    km = model.keras_model
    trunk = keras.Model(km.inputs[0], _rpn_outputs(km))
    trunk_fn = tf.function(lambda x: trunk(x, training=False), input_signature=[tf.TensorSpec(molded.shape)])
    row["trunk_s"] = median_seconds(lambda: [t.numpy() for t in trunk_fn(inputs[0])], repeats)
    front = keras.Model(km.inputs, km.get_layer("mrcnn_detection").output)
    front_fn = tf.function(lambda a, b, c: front([a, b, c], training=False),
                           input_signature=[tf.TensorSpec(t.shape) for t in inputs])
    row["to_detections_s"] = median_seconds(lambda: [t.numpy() for t in front_fn(*inputs)], repeats)

    bare = backbone_model(config, (size, size, 3))
    forward = tf.function(lambda x: bare(x, training=False), input_signature=[tf.TensorSpec(molded.shape)])
    row["backbone_s"] = median_seconds(lambda: [t.numpy() for t in forward(inputs[0])], repeats)

    model.config.DETECT_MASKS_ON_SURVIVORS = False
    model._predict_fns.clear()
    row["plain_detect_s"] = median_seconds(lambda: model.detect([image]), repeats)
    row["ratio"] = row["detect_s"] / row["backbone_s"]
    if few:
        row.update(few_detections(model, image, few, repeats))
        if "few_detect_s" in row:
            row["few_ratio"] = row["few_detect_s"] / row["backbone_s"]
    row["peak_rss_all_mb"] = round(peak_rss_mb(), 1)
    return row


def few_detections(model, image, few, repeats):
    """Random weights saturate the softmax, so every detection slot fills. A trained model
    keeps a few detections per image; emulate that (smaller class logits, then the detection
    threshold at the `few`-th score) and time detect() on both paths."""
    km = model.keras_model
    logits = km.get_layer("mrcnn_class_logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * 0.05, bias])
    detection = km.get_layer("mrcnn_detection")
    detection.min_confidence = 0.0  # read when the graph is traced
    model._predict_fns.clear()
    scores = model.detect([image])[0]["scores"]
    if not len(scores):
        return {}
    detection.min_confidence = float(scores[min(few, len(scores)) - 1])
    out = {}
    for key, survivors in (("few_detect_s", True), ("few_plain_detect_s", False)):
        model.config.DETECT_MASKS_ON_SURVIVORS = survivors
        model._predict_fns.clear()
        out[key] = median_seconds(lambda: model.detect([image]), repeats)
    out["few_detections"] = int(len(model.detect([image])[0]["class_ids"]))
    return out


def _rpn_outputs(km):
    """rpn_class and rpn_bbox of the inference model (the trunk's last tensors)."""
    from mrcnn.model import INFERENCE_OUTPUTS
    outputs = km.outputs
    return [outputs[INFERENCE_OUTPUTS.index("rpn_class")], outputs[INFERENCE_OUTPUTS.index("rpn_bbox")]]


def run_detect(args):
    rows = []
    for config_set in args.sets:
        for size in args.sizes:
            for backbone in args.backbones:
                cmd = [sys.executable, os.path.abspath(__file__), "--detect-worker",
                       json.dumps([config_set, backbone, size, args.repeats, args.few])]
                print(f"detect: {config_set} {backbone} {size} ...", file=sys.stderr, flush=True)
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.stderr.write(done.stderr[-3000:])
                    raise SystemExit(f"detect worker failed: {config_set} {backbone} {size}")
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


# --- train ---------------------------------------------------------------------------------

def lesion_files(folder, count=8):
    """Synthetic lesions written as 600x450 JPEG images and PNG masks (ISIC-like files)."""
    import cv2
    from isic import synthetic
    from mrcnn import utils

    class LesionFiles(utils.Dataset):
        def load_image(self, image_id):
            return cv2.imread(self.image_info[image_id]["path"])[..., ::-1].copy()

        def load_mask(self, image_id):
            mask = cv2.imread(self.image_info[image_id]["path"][:-4] + ".png", cv2.IMREAD_GRAYSCALE) > 0
            return mask[..., np.newaxis], np.array([1], np.int32)

    dataset = LesionFiles()
    dataset.add_class("lesion", 1, "lesion")
    for i in range(count):
        image, mask, _, _ = synthetic.render_sample(np.random.default_rng([7, i]), size=(450, 600))
        path = os.path.join(folder, f"{i}.jpg")
        cv2.imwrite(path, image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(os.path.join(folder, f"{i}.png"), mask)
        dataset.add_image("lesion", i, path)
    dataset.prepare()
    return dataset


def model_step(backbone, batch, dataset, warmup, steps, logs, config=None):
    import keras
    from mrcnn.data.augment import default_augmentation
    from mrcnn.model import MaskRCNN

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._start)

    keras.backend.clear_session()
    config = config or train_config(backbone, batch, warmup + steps)
    model = MaskRCNN("training", config, logs)
    timer = StepTimer()
    model.train(dataset, dataset, learning_rate=0.001, epochs=1, layers="all", verbose=0,
                augmentation=default_augmentation("task1", seed=0), custom_callbacks=[timer])
    traces = getattr(model.keras_model, "train_step_traces", None)  # tracings of train_step over the run
    return {"backbone": backbone, "batch": batch, "first_step_s": round(timer.times[0], 2),
            "step_s": round(float(np.median(timer.times[warmup:])), 3), "train_function_traces": traces,
            "config": config_summary(config)}


def bare_resnet50_step(batch, warmup, steps, config=None):
    """ResNet-50 backbone (BatchNorm frozen, as in Mask R-CNN) with a mean-of-C5 loss, SGD;
    or the backbone of `config` (its BACKBONE, TRAIN_BN and image size)."""
    import keras
    import tensorflow as tf
    from mrcnn.modeling.backbone import backbone_model

    keras.backend.clear_session()
    config = config or train_config("resnet50", batch, 1)
    size = int(config.IMAGE_SHAPE[0])
    model = backbone_model(config, (size, size, 3))
    optimizer = keras.optimizers.SGD(0.001, momentum=0.9)
    images = tf.random.uniform((batch, size, size, 3), -100, 100)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(x, training=True)[-1])
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        return loss

    return round(median_seconds(lambda: step(images).numpy(), steps, warmup), 3)


def run_train(args, dataset, logs):
    # Bare steps first, in a process that has not trained yet: timed after four training runs, one
    # run's bare step read 3.05 s against 1.87 s in bench/profile_step.py the same hour.
    bare = {}
    for batch in args.batches:
        print(f"train: bare resnet50 batch {batch} ...", file=sys.stderr, flush=True)
        bare[batch] = bare_resnet50_step(batch, args.warmup, args.steps)
    rows = []
    for backbone in args.backbones:
        for batch in args.batches:
            print(f"train: {backbone} batch {batch} ...", file=sys.stderr, flush=True)
            rows.append(model_step(backbone, batch, dataset, args.warmup, args.steps, logs))
    for row in rows:
        row["bare_resnet50_step_s"] = bare[row["batch"]]
        row["ratio"] = round(row["step_s"] / bare[row["batch"]], 2)
        row["images_per_s"] = round(row["batch"] / row["step_s"], 3)
    if args.synthetic:
        rows.append(synthetic_row(dataset, args, logs))
    return rows


def synthetic_row(dataset, args, logs):
    """The quick start's config (lesions.py --dataset synthetic) and its bare backbone, same size and batch."""
    import lesions
    print("train: synthetic quick-start config ...", file=sys.stderr, flush=True)
    config = lesions.make_config("segmentation", synthetic=True,
                                 overrides={"STEPS_PER_EPOCH": args.warmup + args.steps, "VALIDATION_STEPS": 1}.items())
    bare = bare_resnet50_step(config.BATCH_SIZE, args.warmup, args.steps, config=config)
    row = model_step(config.BACKBONE, config.BATCH_SIZE, dataset, args.warmup, args.steps, logs, config=config)
    row["synthetic"] = True
    row["size"] = int(config.IMAGE_SHAPE[0])
    row["bare_backbone_step_s"] = bare
    row["ratio"] = round(row["step_s"] / row["bare_backbone_step_s"], 2)
    row["images_per_s"] = round(row["batch"] / row["step_s"], 3)
    return row


# --- data ----------------------------------------------------------------------------------

def pipeline_rate(dataset, workers, use_multiprocessing, batches):
    """Images per second of the training feed alone (loading, resizing, augmentation, targets)."""
    from mrcnn.engine import trainer
    from mrcnn.data.augment import default_augmentation

    config = train_config("resnet50", 2, batches)
    feed = trainer.TrainingFeed(dataset, config, shuffle=True, augmentation=default_augmentation("task1", seed=0),
                                 steps=batches, workers=workers, use_multiprocessing=use_multiprocessing)
    from feed_rate import images_per_second
    return round(images_per_second(feed), 2)


def run_data(args, dataset):
    print("data pipeline ...", file=sys.stderr, flush=True)
    return {f"{'processes' if mp else 'threads'}={w}": pipeline_rate(dataset, w, mp, args.data_batches)
            for w, mp in ((0, False), (1, False), (2, False), (2, True))}


# --- export (a SavedModel vs detect(), one subprocess) ---------------------------------------

def export_worker(backbone, size, repeats):
    """Export the Task 1 config with random weights, load it back and time its serving
    signature against detect() on one 450x600 image; returns a JSON-ready dict."""
    import keras
    import tensorflow as tf
    from isic.modes import export as isic_export
    from mrcnn.io import saved_model
    from mrcnn.modeling.backbone import backbone_model
    from mrcnn.model import MaskRCNN

    keras.utils.set_random_seed(0)
    config = detect_config("task1", backbone, size)
    image = np.random.default_rng(0).integers(0, 256, size=(450, 600, 3)).astype(np.uint8)
    model = MaskRCNN("inference", config, os.path.join(tempfile.gettempdir(), "mrcnn_speed_logs"))
    folder = os.path.join(tempfile.mkdtemp(prefix="mrcnn-export-"), "segmentation")
    start = time.perf_counter()
    card = isic_export.export_model(model, "segmentation", folder, "none", [("random", image)])
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    exported = saved_model.ExportedModel(folder)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    exported.run(image)
    first_call_s = time.perf_counter() - start
    row = {"backbone": backbone, "size": size, "image": "450x600", "export_s": round(export_s, 1),
           "load_s": round(load_s, 2), "first_call_s": round(first_call_s, 2),
           "size_mb": round(card["size_bytes"] / 1e6, 1), "agreement": {
               k: v for k, v in card["agreement_with_detect"].items() if k != "per_image"}}
    row["detect_s"] = median_seconds(lambda: model.detect([image]), repeats)
    row["exported_s"] = median_seconds(lambda: exported.run(image), repeats)
    bare = backbone_model(config, (size, size, 3))
    forward = tf.function(lambda x: bare(x, training=False), input_signature=[tf.TensorSpec((1, size, size, 3))])
    molded = tf.zeros((1, size, size, 3))
    row["backbone_s"] = median_seconds(lambda: [t.numpy() for t in forward(molded)], repeats)
    row["ratio"] = row["exported_s"] / row["detect_s"]
    return row


def run_export(args):
    backbone, size = args.backbones[0], args.sizes[0]
    print(f"export: task1 {backbone} {size} ...", file=sys.stderr, flush=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--export-worker", json.dumps([backbone, size, args.repeats])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"export worker failed: {backbone} {size}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def export_lines(row):
    a = row["agreement"]
    return ["Exported SavedModel vs detect(), Task 1 config, same image (450x600) in the same process",
            "", "| backbone | size | detect s/img | exported s/img | exported/detect | bare backbone s | "
            "export s | load s | first call s | SavedModel MB | same detections | max box px | max score diff |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {row['backbone']} | {row['size']} | {row['detect_s']:.3f} | {row['exported_s']:.3f} | "
            f"{row['ratio']:.2f} | {row['backbone_s']:.3f} | {row['export_s']:.0f} | {row['load_s']:.1f} | "
            f"{row['first_call_s']:.1f} | {row['size_mb']:.1f} | {a['same_count_all']} ({a['detections_per_image'][0]}) | "
            f"{a['max_box_px']} | {a['max_score_diff']:.1e} |", ""]


# --- report --------------------------------------------------------------------------------

def machine():
    import keras
    import tensorflow as tf
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "memory_gib": round(mem, 1), "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}


def few_cell(row):
    if "few_detect_s" not in row:
        return ""
    return f"{row['few_detect_s']:.3f} / {row['few_plain_detect_s']:.3f} ({row['few_detections']} det, ratio {row['few_ratio']:.2f})"


def markdown(out, args):
    m = out["machine"]
    lines = [f"Machine: {m['processor']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, Python {m['python']}, "
             f"TF {m['tensorflow']}, Keras {m['keras']}; load average at start {m['load_average_at_start']}; "
             f"random weights; detect: median of {args.repeats} after one warm-up.", ""]
    detect = out.get("detect", [])
    for config_set in dict.fromkeys(r["set"] for r in detect):
        c = next(r["config"] for r in detect if r["set"] == config_set)
        lines += [f"detect(), config `{config_set}`: NUM_CLASSES {c['NUM_CLASSES']}, POST_NMS_ROIS_INFERENCE "
                  f"{c['POST_NMS_ROIS_INFERENCE']}, DETECTION_MAX_INSTANCES {c['DETECTION_MAX_INSTANCES']}, "
                  f"DETECTION_MIN_CONFIDENCE {c['DETECTION_MIN_CONFIDENCE']}", "",
                  "| backbone | size | detect s/img | plain path s/img | bare backbone s | ratio | detections | "
                  "with few detections: detect / plain s | backbone+FPN+RPN s | to detections s | tf.function s "
                  "| peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in detect if r["set"] == config_set):
            lines.append(f"| {r['backbone']} | {r['size']} | {r['detect_s']:.3f} | {r['plain_detect_s']:.3f} | "
                         f"{r['backbone_s']:.3f} | {r['ratio']:.2f} | {r['detections']} | {few_cell(r)} | {r['trunk_s']:.3f} | "
                         f"{r['to_detections_s']:.3f} | {r['predict_s']:.3f} | {r['peak_rss_mb']:.0f} |")
        lines.append("")
    if out.get("train"):
        c = out["train"][0]["config"]
        lines += [f"Training at {TRAIN_SIZE}, Task 1 config: NUM_CLASSES {c['NUM_CLASSES']}, TRAIN_ROIS_PER_IMAGE "
                  f"{c['TRAIN_ROIS_PER_IMAGE']}; median of {args.steps} steps after {args.warmup}", "",
                  "| backbone | batch | s/step | first step s | bare ResNet-50 step s | ratio | images/s |",
                  "|---|---|---|---|---|---|---|"]
        for r in (r for r in out["train"] if not r.get("synthetic")):
            lines.append(f"| {r['backbone']} | {r['batch']} | {r['step_s']:.3f} | {r['first_step_s']:.1f} | "
                         f"{r['bare_resnet50_step_s']:.3f} | {r['ratio']:.2f} | {r['images_per_s']:.3f} |")
        for r in (r for r in out["train"] if r.get("synthetic")):
            lines += ["", f"Quick-start config (lesions.py --dataset synthetic): {r['backbone']}, {r['size']} px, "
                      f"TRAIN_ROIS_PER_IMAGE {r['config']['TRAIN_ROIS_PER_IMAGE']}", "",
                      f"| backbone | batch | s/step | first step s | bare {r['backbone']} step s | ratio | images/s |",
                      "|---|---|---|---|---|---|---|",
                      f"| {r['backbone']} | {r['batch']} | {r['step_s']:.3f} | {r['first_step_s']:.1f} | "
                      f"{r['bare_backbone_step_s']:.3f} | {r['ratio']:.2f} | {r['images_per_s']:.3f} |"]
        lines.append("train_step tracings per run (1-2 means compiled once): "
                     + ", ".join(str(r["train_function_traces"]) for r in out["train"]))
        lines.append("")
    if out.get("data"):
        lines += ["Data pipeline alone, images/s: " + ", ".join(f"{k}: {v}" for k, v in out["data"].items())]
        for r in (r for r in out.get("train", []) if not r.get("synthetic")):
            lines.append(f"- vs {r['backbone']} batch {r['batch']} training ({r['images_per_s']} images/s): "
                         f"{out['data']['threads=2'] / r['images_per_s']:.1f}x (2 threads)")
    if out.get("export"):
        lines += [""] + export_lines(out["export"])
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--only", nargs="+", choices=("detect", "train", "data", "export"),
                        default=["detect", "train", "data", "export"])
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS), help="detect config sets")
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "resnet101"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024], help="detect image sizes")
    parser.add_argument("--repeats", type=int, default=5, help="detect: timed calls after one warm-up")
    parser.add_argument("--few", type=int, default=3,
                        help="also time both paths with this many detections (0: skip)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2], help="training batch sizes")
    parser.add_argument("--warmup", type=int, default=2, help="training steps before timing")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--no-synthetic", dest="synthetic", action="store_false",
                        help="train: skip the quick-start config row")
    parser.add_argument("--data-batches", type=int, default=12, help="batches of 2 for the data pipeline")
    parser.add_argument("--json", default=os.path.join(ROOT, "bench", "speed.json"))
    parser.add_argument("--detect-worker", help=argparse.SUPPRESS)
    parser.add_argument("--export-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.detect_worker:
        print(json.dumps(detect_worker(*json.loads(args.detect_worker))))
        return None
    if args.export_worker:
        print(json.dumps(export_worker(*json.loads(args.export_worker))))
        return None

    out = {"machine": machine(), "args": {k: v for k, v in vars(args).items()
                                          if k not in ("detect_worker", "export_worker")}}
    if "detect" in args.only:
        out["detect"] = run_detect(args)
    if "export" in args.only:
        out["export"] = run_export(args)
    if "train" in args.only or "data" in args.only:
        folder = tempfile.mkdtemp(prefix="mrcnn-speed-")
        dataset = lesion_files(folder)
        if "data" in args.only:
            out["data"] = run_data(args, dataset)
        if "train" in args.only:
            out["train"] = run_train(args, dataset, os.path.join(folder, "logs"))
    table = markdown(out, args)
    out["markdown"] = table
    print(table)
    from mrcnn.io import atomic
    atomic.write_json(args.json, out)
    print(f"\nwrote {args.json}")
    return out


if __name__ == "__main__":
    main()


def bare_step_in_fresh_process(who):
    """bare_resnet50_step (batch 2, 512 px) in a fresh process, so a bench that only drives
    lesions.py subprocesses never loads TensorFlow itself; None (said on stderr) when it fails."""
    code = ("import sys; sys.path.insert(0, 'bench'); import speed; "
            "print(speed.bare_resnet50_step(2, warmup=2, steps=5))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"{who}: the bare ResNet-50 step failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None


def format_minutes(seconds):
    """'12 min 05 s', or '-' for None."""
    if seconds is None:
        return "-"
    return f"{int(seconds // 60)} min {int(round(seconds % 60)):02d} s"

