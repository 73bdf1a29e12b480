"""Cost at the real ISIC 2018 size: memory of investigate/predict and Task 1 refinement time
on generated full-size (2848x4288) images, in one run.

    python bench/scale.py --weights RUN/mask_rcnn_segmentation_real.h5 [--data FOLDER]
                          [--small 10 --large 40] [--refine-images 3] [--output bench/scale.json]

Prints a Markdown table:
- peak resident memory (ru_maxrss of the child process, from os.wait4) of
  `lesions.py --mode investigate` on the first `--small` and `--large` images of the set, and
  their difference (target: < 300 MB), the same for `--mode predict` on folders of those images;
  wall time per image of each run;
- Task 1 refinement time per full-size image: GrabCut (TASK1_MASK_REFINEMENT=grabcut) and the
  test-time flips (TASK1_TTA_FLIPS) on the network's lesion mask of each image (the ground truth
  mask, shifted, when the network finds nothing there); target <= 3 s each;
- the training-feed rows (images/s uncached, cached, and from 512x512 sources) through
  `training_feed_rows` (bench/feed_rate.py: full-size sources uncached and cached, and 512x512);
- the machine's bare ResNet-50 training step at 512 px (bench/speed.py's measure) beside the timings.

The set: `--unique` images generated once as `python -m isic.synthetic DATA/generated --count 10
--task3-count 0 --size 2848x4288` would, repeated under new ids up to `--large` images. The investigate/predict runs use the checkpoint's
config.json with TASK1_MASK_REFINEMENT=none and TASK1_TTA_FLIPS=false (their cost is measured on
its own below), so the memory rows measure the scoring and the output writing.
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402

from mrcnn.io import atomic  # noqa: E402

FULL_SIZE = (2848, 4288)
MEMORY_TARGET_MB = 300
REFINE_TARGET_S = 3.0
INFERENCE_SETTINGS = ("TASK1_MASK_REFINEMENT=\"none\"", "TASK1_TTA_FLIPS=false")


def ensure_full_size_set(data, unique, count):
    """A Task 1 set of `count` full-size images in DATA/set_<count>: `unique` generated images
    (DATA/generated, made once) repeated under new ISIC ids through symbolic links. What
    investigate and predict keep per image does not depend on the pixels, and generating a
    full-size image costs about 10-70 s."""
    from isic import layout, synthetic
    generated = data / "generated"
    manifest = generated / synthetic.MANIFEST_NAME
    summary = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if summary.get("count", 0) < unique or tuple(summary.get("image_size", ())) != FULL_SIZE:
        print(f"generating {unique} images of {FULL_SIZE[0]}x{FULL_SIZE[1]} in {generated} ...",
              file=sys.stderr, flush=True)
        synthetic.generate_dataset(generated, count=unique, image_size=FULL_SIZE, task3_count=0, progress=True)
    folders = (layout.TASK12_INPUT_DIR.format(split="Training"), layout.TASK1_GT_DIR.format(split="Training"))
    sources = sorted((generated / folders[0]).glob("*.jpg"))[:unique]
    target = data / f"set_{count}"
    for n in range(count):
        source_id, new_id = sources[n % len(sources)].stem, f"ISIC_{9000000 + n:07d}"
        for folder, name in zip(folders, ("{}.jpg", layout.segmentation_name("{}"))):
            link = target / folder / name.format(new_id)
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(generated / folder / name.format(source_id))
    return target


def child_peak(argv):
    """(peak RSS in MB, wall seconds, exit code) of one lesions.py run in a child process."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, str(ROOT / "lesions.py"), *argv], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if child.returncode:
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"scale: lesions.py {' '.join(argv[:2])} exited {child.returncode}: {tail}")
    return usage.ru_maxrss / 1024.0, wall, child.returncode


def detection_settings(detections):
    """--set values that make a weak checkpoint report `detections` masks per image, as a
    trained Task 1 model does (1-3): DETECTION_MIN_CONFIDENCE 0 and that many slots."""
    if not detections:
        return ()
    return ("DETECTION_MIN_CONFIDENCE=0", f"DETECTION_MAX_INSTANCES={int(detections)}")


def memory_rows(data, weights, counts, work, modes=("investigate", "predict"), detections=0):
    """Peak RSS and s/image of investigate and predict on `counts` images each."""
    from isic import layout
    images = sorted((data / layout.TASK12_INPUT_DIR.format(split="Training")).glob("*.jpg"))
    settings = [a for s in INFERENCE_SETTINGS + detection_settings(detections) for a in ("--set", s)]
    rows = []
    for mode in modes:
        row = {"mode": mode}
        for count in counts:
            out = work / f"{mode}_{count}"
            if mode == "investigate":
                argv = ["--mode", "investigate", "--task", "segmentation", "--dataset", str(data),
                        "--subset", "all", "--limit", str(count)]
            else:
                folder = work / f"images_{count}"
                folder.mkdir(exist_ok=True)
                for path in images[:count]:
                    link = folder / path.name
                    if not link.exists():
                        link.symlink_to(path)
                argv = ["--mode", "predict", "--task", "segmentation", "--image", str(folder)]
            argv += ["--weights", str(weights), "--output", str(out), "--logs", str(work / "logs"), *settings]
            print(f"{mode} on {count} images ...", file=sys.stderr, flush=True)
            peak, wall, _ = child_peak(argv)
            row[count] = {"peak_rss_mb": round(peak), "s_per_image": round(wall / count, 2)}
            print(f"{mode} {count} images: {row[count]}", file=sys.stderr, flush=True)
            shutil.rmtree(out, ignore_errors=True)
        row["growth_mb"] = row[counts[1]]["peak_rss_mb"] - row[counts[0]]["peak_rss_mb"]
        rows.append(row)
    return rows


def _stand_in_mask(truth):
    """The ground-truth lesion shifted by 3 % of its extent: a network-like mask to refine."""
    ys, xs = np.nonzero(truth)
    dy = max(1, int(0.03 * (ys.max() - ys.min() + 1)))
    dx = max(1, int(0.03 * (xs.max() - xs.min() + 1)))
    return np.roll(truth, (dy, dx), axis=(0, 1))


def refinement_rows(data, weights, count):
    """Seconds per full-size image of GrabCut and of the flips, with the Jaccard of each
    refined mask against the ground truth (a check that the work was real)."""
    import keras
    import lesions
    from isic.evaluation import metrics
    from isic.outputs import deliverables, refinement
    from isic.modes import run_folders
    keras.backend.clear_session()
    config = run_folders.run_config_for(pathlib.Path(weights), lesions.make_config("segmentation", inference=True))
    model = run_folders.load_inference_model(config, pathlib.Path(weights), str(pathlib.Path(tempfile.gettempdir())))
    dataset = run_folders.load_dataset("segmentation", data, "all", config.SEED, limit=count)
    rows = []
    for image_id in dataset.image_ids:
        image = dataset.load_image(image_id)
        truth = dataset.load_mask(image_id)[0].any(axis=-1)
        result = model.detect([image])[0]
        network = deliverables.lesion_mask(result, image.shape)
        source = "network"
        if network.sum() < 0.01 * network.size:
            network, source = _stand_in_mask(truth), "shifted truth"
        start, cpu = time.perf_counter(), time.process_time()
        refined = refinement.grabcut_refine(image, network)
        grabcut_s, grabcut_cpu = time.perf_counter() - start, time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        voted = refinement.flip_vote_mask(model, image, first_mask=deliverables.lesion_mask(result, image.shape))
        flips_s, flips_cpu = time.perf_counter() - start, time.process_time() - cpu

        def j(mask):
            return metrics.jaccard(metrics.segmentation_confusion(truth, mask))
        rows.append({"image": dataset.image_info[image_id]["id"], "mask": source,
                     "grabcut_s": round(grabcut_s, 2), "flips_s": round(flips_s, 2),
                     "grabcut_cpu_s": round(grabcut_cpu, 2), "flips_cpu_s": round(flips_cpu, 2),
                     "jaccard_mask": round(j(network), 4), "jaccard_grabcut": round(j(refined), 4),
                     "jaccard_flips": round(j(voted), 4)})
        print(f"refinement {rows[-1]}", file=sys.stderr, flush=True)
        del image, result, network, refined, voted
    return rows


REAL_DIAMETERS = (None, 400, 200)  # GrabCut working diameters compared on real images


def coarse_truth(truth):
    """The true mask as a 28x28 mask head gives it: resampled through a 28x28 grid in its box,
    then shifted by 4 % of the box (a network-like mask for weights that are not trained)."""
    import cv2
    ys, xs = np.nonzero(truth)
    y1, y2, x1, x2 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    grid = cv2.resize(truth[y1:y2, x1:x2].astype(np.float32), (28, 28), interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(grid, (int(x2 - x1), int(y2 - y1)), interpolation=cv2.INTER_LINEAR) >= 0.5
    out = np.zeros_like(truth)
    out[y1:y2, x1:x2] = coarse
    return np.roll(out, (int(0.04 * (y2 - y1)), -int(0.04 * (x2 - x1))), axis=(0, 1))


def real_refinement_rows(real, weights, masks="network"):
    """Task 1 score of the validation split of a real set (the run's own seeded split) with
    the input mask as is, refined by GrabCut at full resolution (diameter None) and at the
    working diameters of REAL_DIAMETERS, and on the image and truth enlarged 4x (the lesion
    then is scaled down for GrabCut): does scaling by the lesion's size cost score?
    masks: "network" (the checkpoint's top mask) or "coarse-truth" (see coarse_truth)."""
    import cv2
    import lesions
    from isic.evaluation import metrics
    from isic.outputs import deliverables, refinement
    from isic.modes import run_folders
    config = run_folders.run_config_for(pathlib.Path(weights), lesions.make_config("segmentation", inference=True))
    model = None
    if masks == "network":
        import keras
        keras.backend.clear_session()
        model = run_folders.load_inference_model(config, pathlib.Path(weights), tempfile.gettempdir())
    dataset = run_folders.load_dataset("segmentation", real, "val", config.SEED)
    names = ["input mask"] + [f"grabcut {d or 'full'}" for d in REAL_DIAMETERS] + [
        "4x: input mask", f"4x: grabcut {refinement.GRABCUT_DIAMETER}"]
    records, seconds = {n: {} for n in names}, {n: [] for n in names}

    def score(name, isic, truth, fn):
        start = time.perf_counter()
        mask = fn()
        seconds[name].append(time.perf_counter() - start)
        records[name][isic] = metrics.segmentation_record(truth, mask)

    for image_id in dataset.image_ids:
        isic = dataset.image_info[image_id]["id"]
        image = dataset.load_image(image_id)
        truth = dataset.load_mask(image_id)[0].any(axis=-1)
        given = (deliverables.lesion_mask(model.detect([image])[0], image.shape) if model is not None
                 else coarse_truth(truth))
        score("input mask", isic, truth, lambda: given)
        for d in REAL_DIAMETERS:
            score(f"grabcut {d or 'full'}", isic, truth, lambda: refinement.grabcut_refine(image, given, diameter=d))
        big = cv2.resize(image, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
        big_truth = cv2.resize(truth.astype(np.uint8), None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST) > 0
        big_given = (cv2.resize(given.astype(np.uint8), None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST) > 0
                     if model is not None else coarse_truth(big_truth))
        score("4x: input mask", isic, big_truth, lambda: big_given)
        score(f"4x: grabcut {refinement.GRABCUT_DIAMETER}", isic, big_truth,
              lambda: refinement.grabcut_refine(big, big_given))
        print(f"real {isic}: " + ", ".join(f"{n} {r[isic]['jaccard']:.3f}" for n, r in records.items()),
              file=sys.stderr, flush=True)
    rows = []
    for name in names:
        summary = metrics.summarise_task1(records[name])["macro_average"]
        rows.append({"variant": name, "images": len(records[name]),
                     "threshold_jaccard": round(summary["threshold_jaccard"], 4),
                     "jaccard": round(summary["jaccard"], 4),
                     "median_s": None if name.endswith("input mask") else round(float(np.median(seconds[name])), 3)})
    return rows


def training_feed_rows(count):
    """The training feed's images/s from full-size sources uncached and cached, next to 512x512
    sources (bench/feed_rate.py: generates its own sources, starts with a cold cache)."""
    import feed_rate
    return feed_rate.feed_rates(count=count, backbone_step=False)


def bare_backbone_step_s():
    """The machine's bare ResNet-50 training step at 512 px, batch 1 (bench/speed.py)."""
    import keras
    import speed
    step = speed.bare_resnet50_step(batch=1, warmup=1, steps=3)
    keras.backend.clear_session()
    return step


def markdown(report):
    counts = report["counts"]
    lines = [f"Full-size set: {report['images']} generated images of {FULL_SIZE[0]}x{FULL_SIZE[1]} "
             f"(`{report['data']}`); weights `{report['weights']}`; bare ResNet-50 training step at "
             f"512 px, batch 1: {report['bare_backbone_step_s']:.3f} s; detections per image in the memory "
             f"runs: {report['detections'] or 'as the checkpoint gives'}; machine {report['machine']}"]
    if report["memory"]:
        lines += ["", f"| mode | peak RSS {counts[0]} images MB | peak RSS {counts[1]} images MB | growth MB "
                      f"(target < {MEMORY_TARGET_MB}) | s/image ({counts[0]}) | s/image ({counts[1]}) |",
                  "|---|---|---|---|---|---|"]
    for r in report["memory"]:
        a, b = r[counts[0]], r[counts[1]]
        lines.append(f"| {r['mode']} | {a['peak_rss_mb']} | {b['peak_rss_mb']} | {r['growth_mb']} | "
                     f"{a['s_per_image']} | {b['s_per_image']} |")
    if report["refinement"]:
        rows = report["refinement"]
        lines += ["", f"| Task 1 refinement per full-size image (target <= {REFINE_TARGET_S:g} s) | median s | "
                      "max s | median CPU s (all threads) | Jaccard before -> after (mean) |", "|---|---|---|---|---|"]
        before = np.mean([r["jaccard_mask"] for r in rows])
        for key, name in (("grabcut", "GrabCut"), ("flips", "flips (3 extra detections + vote)")):
            times = [r[f"{key}_s"] for r in rows]
            cpu = [r[f"{key}_cpu_s"] for r in rows]
            lines.append(f"| {name} | {np.median(times):.2f} | {max(times):.2f} | {np.median(cpu):.2f} | "
                         f"{before:.4f} -> {np.mean([r[f'jaccard_{key}'] for r in rows]):.4f} |")
        lines.append(f"\nmasks refined: {', '.join(sorted({r['mask'] for r in rows}))}; "
                     f"{len(rows)} images")
    if report.get("real"):
        lines += ["", "| real validation split: Task 1 mask | images | thresholded Jaccard | Jaccard | "
                      "refinement s/image (median) |", "|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['images']} | {r['threshold_jaccard']:.4f} | {r['jaccard']:.4f} | "
                  f"{'' if r['median_s'] is None else r['median_s']} |" for r in report["real"]]
    if report.get("training_feed"):
        import feed_rate
        lines += ["", feed_rate.markdown(report["training_feed"])]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="a Task 1 checkpoint with its config.json beside it")
    parser.add_argument("--data", default=None, help="folder for the full-size set (generated there when absent; "
                        "default $ISIC_SYNTHETIC_DIR/fullsize_2848x4288, else ~/.cache/isic-mrcnn/synthetic/...)")
    parser.add_argument("--unique", type=int, default=10, help="distinct generated images (default 10)")
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--large", type=int, default=40)
    parser.add_argument("--detections", type=int, default=0,
                        help="memory runs: report this many detections per image whatever the scores "
                             "(for checkpoints that find nothing on generated images; default: as trained)")
    parser.add_argument("--feed-images", type=int, default=12,
                        help="images per source size for the training-feed rows (0: skip)")
    parser.add_argument("--refine-images", type=int, default=3, help="images timed for refinement (0: skip)")
    parser.add_argument("--modes", nargs="*", default=["investigate", "predict"],
                        help="lesions.py modes whose memory is measured (none: skip)")
    parser.add_argument("--real", default=None, help="also score GrabCut at full resolution and at "
                        "lesion-sized scales on the validation split of this real Task 1 set "
                        "(e.g. ../shared/ham10000-seg, with --weights trained on it)")
    parser.add_argument("--real-masks", choices=("network", "coarse-truth"), default="network",
                        help="--real: refine the checkpoint's masks, or each true mask resampled through "
                             "a 28x28 grid and shifted (for weights that find nothing)")
    parser.add_argument("--no-backbone-step", action="store_true",
                        help="skip timing the bare backbone step (when another part of a split run prints it)")
    parser.add_argument("--output", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)

    from isic import synthetic
    data = pathlib.Path(args.data) if args.data else synthetic.default_cache_dir() / "fullsize_2848x4288"
    need_set = bool(args.modes or args.refine_images)
    data = ensure_full_size_set(data.expanduser().resolve(), args.unique, args.large) if need_set else data
    weights = pathlib.Path(args.weights).expanduser().resolve()
    import speed
    report = {"data": str(data), "images": f"{args.large} ({args.unique} distinct)", "detections": args.detections, "weights": str(weights), "counts": [args.small, args.large],
              "machine": json.dumps(speed.machine())}
    report["bare_backbone_step_s"] = float("nan") if args.no_backbone_step else bare_backbone_step_s()
    with tempfile.TemporaryDirectory(prefix="scale_") as work:
        report["memory"] = memory_rows(data, weights, (args.small, args.large), pathlib.Path(work), args.modes,
                                       args.detections)
    report["refinement"] = refinement_rows(data, weights, args.refine_images) if args.refine_images else []
    if args.feed_images:
        report["training_feed"] = training_feed_rows(args.feed_images)
    report["real"] = real_refinement_rows(pathlib.Path(args.real).resolve(), weights, args.real_masks) if args.real else []
    print(markdown(report))
    if args.output:
        atomic.write_json(args.output, report, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
