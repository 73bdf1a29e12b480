"""Inference speed: MaskRCNN.detect() seconds per image vs the bare backbone forward pass.

For each backbone and image size: build time, parameter count, detect() on one random
RGB image (warm-up first, then the median of --repeats calls, molding and unmolding
included), the backbone alone (image -> C2..C5 through a tf.function, same image size,
median of --repeats), their ratio, the number of detections and the process's peak RSS
so far. Prints a Markdown table.

usage: python bench/detect_speed.py [--backbones resnet50 resnet101] [--sizes 512]
                                    [--repeats 5] [--weights FILE.h5] [--min-confidence 0.7]
"""
import argparse
import os
import platform
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mrcnn.backbone import backbone_model  # noqa: E402
from mrcnn.config import Config  # noqa: E402
from mrcnn.model import MaskRCNN  # noqa: E402


def median_seconds(fn, repeats):
    fn()  # warm-up (tracing)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_one(backbone, size, args, image):
    config = Config(NAME="bench", NUM_CLASSES=81, BACKBONE=backbone, GPU_COUNT=1, IMAGES_PER_GPU=1,
                    IMAGE_MIN_DIM=size, IMAGE_MAX_DIM=size, DETECTION_MIN_CONFIDENCE=args.min_confidence)
    start = time.perf_counter()
    model = MaskRCNN("inference", config, model_dir=os.path.join("/tmp", "mrcnn_bench_logs"))
    build_s = time.perf_counter() - start
    if args.weights:
        model.load_weights(args.weights, by_name=True)
    detect_s = median_seconds(lambda: model.detect([image]), args.repeats)
    n_det = len(model.detect([image])[0]["class_ids"])

    bare = backbone_model(config, (size, size, 3))
    forward = tf.function(lambda x: bare(x, training=False),
                          input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
    batch = tf.constant(image[None].astype(np.float32) - config.MEAN_PIXEL.astype(np.float32))
    backbone_s = median_seconds(lambda: [t.numpy() for t in forward(batch)], args.repeats)
    return {"backbone": backbone, "size": size, "params": model.keras_model.count_params(), "build_s": build_s,
            "detect_s": detect_s, "backbone_s": backbone_s, "n_det": n_det, "rss": peak_rss_mb()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "resnet101"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--weights", help="optional Keras-2 layout .h5 (81 classes) to load by name")
    parser.add_argument("--min-confidence", type=float, default=0.7, help="DETECTION_MIN_CONFIDENCE")
    args = parser.parse_args(argv)

    rows = []
    for size in args.sizes:
        image = np.random.default_rng(0).integers(0, 256, size=(size, size, 3)).astype(np.uint8)
        for backbone in args.backbones:
            rows.append(bench_one(backbone, size, args, image))
            tf.keras.backend.clear_session() if hasattr(tf, "keras") else None

    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, {platform.python_implementation()} "
          f"{platform.python_version()}, TensorFlow {tf.__version__}; median of {args.repeats} after warm-up")
    print("| backbone | size | params | build s | detect s/img | backbone s | ratio | detections | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['size']} | {r['params']:,} | {r['build_s']:.1f} | {r['detect_s']:.2f} | "
              f"{r['backbone_s']:.2f} | {r['detect_s'] / r['backbone_s']:.2f} | {r['n_det']} | {r['rss']:.0f} |")


if __name__ == "__main__":
    main()
