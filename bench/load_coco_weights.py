"""Load a full mask_rcnn_coco.h5-layout file into the ResNet-101 inference model; print a table.

The released file cannot be downloaded here, so by default the reference writer
(../shared/mrcnn-ref/make_reference_h5.py) writes one with the same layout (406 layer groups,
690 datasets, 257 MB) into a temporary folder. Every model weight is then compared bit for
bit with the file's dataset.

    python bench/load_coco_weights.py [--h5 PATH] [--layout mrcnn_coco_layout.json]
"""
import argparse
import logging
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_LAYOUT = ROOT.parent / "shared" / "mrcnn-ref" / "mrcnn_coco_layout.json"


def write_reference_file(layout, out):
    writer = pathlib.Path(layout).parent / "make_reference_h5.py"
    cmd = [sys.executable, str(writer), str(layout), str(out), "--no-value-check"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def compare_all(keras_model, h5_path, skip=()):
    """(weights checked, mismatching weight names) comparing the model with the file by name;
    layers in `skip` are left out."""
    import h5py
    import numpy as np

    from mrcnn.io.weights_h5 import _model_entries

    checked, mismatches = 0, []
    with h5py.File(h5_path, "r") as f:
        root = f["model_weights"] if "model_weights" in f and "layer_names" not in f.attrs else f
        for lname, weights in _model_entries(keras_model):
            if lname in skip:
                continue
            for w in weights:
                checked += 1
                ds = root.get(lname + "/" + w.name) if lname in root else None
                if ds is None or not np.array_equal(np.asarray(w.variable), ds[()]):
                    mismatches.append(w.name)
    return checked, mismatches


def compare_layout(keras_model, layout_path, num_classes):
    """Names of weighted layers whose Keras-2 weight names, shapes or trainability differ from
    the layout JSON (heads are class-dependent, so they are left out unless 81 classes)."""
    import json

    from mrcnn.io.weights_h5 import HEAD_LAYERS, model_weight_layout

    if not os.path.exists(layout_path):
        return None
    with open(layout_path) as f:
        expected = {e["name"]: e["weights"] for e in json.load(f)["layers"]}
    ours = {e["name"]: e["weights"] for e in model_weight_layout(keras_model)}
    skip = set(HEAD_LAYERS) if num_classes != 81 else set()
    return sorted(n for n in set(expected) | set(ours)
                  if n not in skip and expected.get(n) != ours.get(n))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--h5", help="Keras-2 layout weights file (default: write a reference one)")
    parser.add_argument("--layout", default=str(DEFAULT_LAYOUT),
                        help="layout JSON for the reference writer (default: %(default)s)")
    parser.add_argument("--num-classes", type=int, default=81,
                        help="model classes; other than 81 loads with the heads excluded")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from mrcnn.config import Config
    from mrcnn.model import MaskRCNN
    from mrcnn.io.weights_h5 import HEAD_LAYERS, load_weights_h5, save_weights_h5

    with tempfile.TemporaryDirectory() as tmp:
        h5_path = args.h5
        write_s = None
        if h5_path is None:
            h5_path = os.path.join(tmp, "mask_rcnn_coco_reference.h5")
            t0 = time.perf_counter()
            write_reference_file(args.layout, h5_path)
            write_s = time.perf_counter() - t0

        exclude = list(HEAD_LAYERS) if args.num_classes != 81 else []
        config = Config(NAME="coco_bench", NUM_CLASSES=args.num_classes, BACKBONE="resnet101",
                        GPU_COUNT=1, IMAGES_PER_GPU=1)
        t0 = time.perf_counter()
        model = MaskRCNN(mode="inference", config=config, model_dir=tmp)
        build_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        report = load_weights_h5(model.keras_model, h5_path, by_name=True, exclude=exclude)
        load_s = time.perf_counter() - t0
        checked, mismatches = compare_all(model.keras_model, h5_path, skip=exclude)

        saved = os.path.join(tmp, "saved_checkpoint.h5")
        t0 = time.perf_counter()
        save_weights_h5(model.keras_model, saved)
        save_s = time.perf_counter() - t0
        resaved_checked, resaved_mismatches = compare_all(model.keras_model, saved)

        layout_diff = compare_layout(model.keras_model, args.layout, args.num_classes)
        rows = [
            ("machine", "%s, %d CPUs" % (platform.machine(), os.cpu_count())),
            ("file", h5_path if args.h5 else "make_reference_h5.py output (temporary)"),
            ("file size", "%.1f MB (%d bytes)" % (os.path.getsize(h5_path) / 1e6,
                                                  os.path.getsize(h5_path))),
            ("reference write seconds", "%.2f" % write_s if write_s is not None else "-"),
            ("model build seconds", "%.2f" % build_s),
            ("model classes (heads excluded)", "%d (%s)" % (args.num_classes,
                                                            ", ".join(exclude) or "none")),
            ("load seconds", "%.2f" % load_s),
            ("layers loaded", str(len(report.loaded))),
            ("model layers missing in file", str(len(report.missing_in_file))),
            ("file layers unused", str(len(report.unused_in_file))),
            ("weights checked", str(checked)),
            ("mismatches", str(len(mismatches))),
            ("weighted layers whose names/shapes differ from the layout JSON",
             str(len(layout_diff)) if layout_diff is not None else "- (no layout)"),
            ("save_weights_h5 seconds", "%.2f" % save_s),
            ("saved file: weights re-checked / mismatches",
             "%d / %d" % (resaved_checked, len(resaved_mismatches))),
        ]
        width = max(len(k) for k, _ in rows)
        print("| %s | value |" % "what".ljust(width))
        print("|%s|-------|" % ("-" * (width + 2)))
        for key, value in rows:
            print("| %s | %s |" % (key.ljust(width), value))
        if report.missing_in_file or report.unused_in_file:
            print("missing in file:", report.missing_in_file)
            print("unused in file:", report.unused_in_file)
        if mismatches:
            print("first mismatches:", mismatches[:10])
        if layout_diff:
            print("layers differing from the layout:", layout_diff[:10])
        failed = mismatches or resaved_mismatches or report.missing_in_file or layout_diff
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
