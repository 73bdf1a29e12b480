"""Training-feed rate from full-size sources, without and with the decoded-image cache, next
to the rate from 512x512 sources (issue 12's goal: cached full-size >= 0.8 x 512x512).

The feed is the one training uses: mrcnn.engine.trainer.TrainingFeed (load_image_gt with the
Task 1 augmentation, RPN targets, molding) for lesions.SegmentationConfig (512x512, 2 images
per batch), drained through Keras' PyDataset adapter with `threads` worker threads. Each
row is one epoch over the generated images: "off, skimage resize (before)" as the feed was
before the cache (full-resolution skimage resize); "off" with IMAGE_CACHE False; "first pass" with
an empty cache (decodes and writes every entry); "cached" the next epoch (reads them). The
image cache lives in a temporary folder, so a run never reads entries of an earlier one.
The bare ResNet-50 training step (bench/speed.py) of the same process is printed beside.

usage: python bench/feed_rate.py [--count 12] [--threads 2] [--repeats 3] [--work DIR] [--no-augmentation]
Sources are generated once into DIR (default $ISIC_SYNTHETIC_DIR/feed-bench, else
~/.cache/isic-mrcnn/synthetic/feed-bench) with isic.synthetic, as
`python -m isic.synthetic OUT --count N --task3-count 0 --size 2848x4288` (and 512x512) do.
Import `feed_rates` to get the rows as dicts, `markdown` to print them.
"""
import argparse
import contextlib
import math
import os
import pathlib
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

FULL_SIZE = (2848, 4288)
SMALL_SIZE = (512, 512)
GOAL_RATIO = 0.8


def ensure_sources(work_dir, size, count, seed=0):
    """A synthetic Task 1/2 set of `count` images of `size` (h, w) under work_dir, generated once."""
    from isic import synthetic
    root = pathlib.Path(work_dir) / f"task12_n{count}_{size[0]}x{size[1]}_seed{seed}"
    if not synthetic.is_complete(root, count, size, seed, task3_count=0):
        print(f"generating {count} images of {size[0]}x{size[1]} in {root} ...", file=sys.stderr, flush=True)
        synthetic.generate_dataset(root, count=count, image_size=size, seed=seed, task3_count=0, progress=False)
    return root


@contextlib.contextmanager
def image_cache_folder(path):
    """Point mrcnn.data.image_cache at `path` for the duration."""
    from mrcnn.data import image_cache
    previous = os.environ.get(image_cache.CACHE_ENV_VAR)
    os.environ[image_cache.CACHE_ENV_VAR] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(image_cache.CACHE_ENV_VAR, None)
        else:
            os.environ[image_cache.CACHE_ENV_VAR] = previous


def skimage_resize(dataset, config, image_id, rng=None):
    """The feed's resize before issue 12 (utils.resize_image/resize_mask at full resolution:
    skimage bilinear in float64, nearest-neighbour masks), for the "before" row."""
    from mrcnn import utils
    from mrcnn.data import feed, image_cache
    image = dataset.load_image(image_id)
    mask, class_ids = dataset.load_mask(image_id)
    mask, class_ids = feed._check_annotations(image, mask, class_ids, dataset, image_id)
    original_shape = image.shape
    image, window, scale, padding, crop = utils.resize_image(
        image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
        max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE, rng=rng)
    mask = utils.resize_mask(mask, scale, padding, crop).astype(bool)
    return image_cache.ResizedItem(image, mask, class_ids, original_shape, window, scale, padding, crop)


@contextlib.contextmanager
def feed_resize(build):
    """Use `build` (or the current resize when None) as load_image_gt's decode-and-resize step."""
    from mrcnn.data import feed
    current = feed.resize_for_training
    feed.resize_for_training = build or current
    try:
        yield
    finally:
        feed.resize_for_training = current


def epoch_rate(dataset, config, threads, augment, epoch=0):
    """Images per second of one epoch of the training feed over `dataset`."""
    from mrcnn.engine import trainer
    from mrcnn.data.augment import default_augmentation

    steps = math.ceil(dataset.num_images / config.BATCH_SIZE)
    augmentation = default_augmentation("task1", seed=0) if augment else None
    feed = trainer.TrainingFeed(dataset, config, shuffle=True, augmentation=augmentation, steps=steps,
                                 workers=threads, use_multiprocessing=False)
    feed.set_epoch(epoch)
    return images_per_second(feed)


def images_per_second(feed):
    """Images per second served by one epoch of `feed`, read the way Keras' fit() reads a
    PyDataset (bench/speed.py's feed row uses it too)."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    adapter = PyDatasetAdapter(feed, shuffle=False)
    adapter.on_epoch_begin()
    start = time.perf_counter()
    count = sum(batch[0][0].shape[0] for batch in adapter.get_numpy_iterator())
    seconds = time.perf_counter() - start
    adapter.on_epoch_end()
    return count / seconds


def feed_rates(work_dir=None, count=12, threads=2, augment=True, backbone_step=True, seed=0, before=True,
               repeats=3):
    """Rows {sources, cache, images_per_s, ms_per_image, passes} for full-size and 512x512 sources
    (with `before`, also full-size through the resize the feed used before the cache), plus
    {"ratio": cached full-size / uncached 512x512, "goal": 0.8, "bare_resnet50_step_s": ...}.
    The rows compared by the ratio (and cached 512x512) are medians of `repeats` epochs, measured
    in turn, so that load from other processes weighs on both alike."""
    import statistics

    import lesions
    from isic import synthetic
    from isic.data.datasets import ISICSegmentationDataset

    work_dir = pathlib.Path(work_dir) if work_dir else synthetic.default_cache_dir() / "feed-bench"
    full, small = f"{FULL_SIZE[0]}x{FULL_SIZE[1]}", f"{SMALL_SIZE[0]}x{SMALL_SIZE[1]}"
    datasets = {}
    for label, size in ((full, FULL_SIZE), (small, SMALL_SIZE)):
        dataset = ISICSegmentationDataset()
        dataset.load_isic(ensure_sources(work_dir, size, count, seed), subset="all")
        dataset.prepare()
        datasets[label] = dataset

    rates = {}

    def measure(label, name, cache_on, epoch, build=None):
        print(f"feed: {label} {name} (epoch {epoch}) ...", file=sys.stderr, flush=True)
        config = lesions.SegmentationConfig(IMAGE_CACHE=cache_on)
        with feed_resize(build):
            rate = epoch_rate(datasets[label], config, threads, augment, epoch)
        rates.setdefault((label, name), []).append(rate)

    cache_root = tempfile.mkdtemp(prefix="feed-bench-cache-", dir=work_dir)
    try:
        with image_cache_folder(cache_root):
            if before:
                measure(full, "off, skimage resize (before)", False, 0, skimage_resize)
            measure(full, "off", False, 0)
            measure(full, "first pass", True, 0)
            measure(small, "first pass", True, 0)
            for r in range(repeats):
                measure(full, "cached", True, 1 + r)
                measure(small, "off", False, r)
                measure(small, "cached", True, 1 + r)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
    order = ["off, skimage resize (before)", "off", "first pass", "cached"]
    rows = []
    for label in (full, small):
        for name in order:
            if (label, name) not in rates:
                continue
            values = rates[(label, name)]
            rate = statistics.median(values)
            rows.append({"sources": label, "cache": name, "images": datasets[label].num_images,
                         "passes": len(values), "images_per_s": round(rate, 2), "ms_per_image": round(1000 / rate, 1),
                         "all_images_per_s": [round(v, 2) for v in values]})
    median = {k: statistics.median(v) for k, v in rates.items()}
    summary = {"rows": rows, "threads": threads, "augmentation": augment, "goal": GOAL_RATIO,
               "ratio": round(median[(full, "cached")] / median[(small, "off")], 2),
               "uncached_ratio": round(median[(full, "off")] / median[(small, "off")], 3),
               "load_average": [round(v, 2) for v in os.getloadavg()]}
    if backbone_step:
        from speed import bare_resnet50_step
        summary["bare_resnet50_step_s"] = bare_resnet50_step(batch=2, warmup=1, steps=3)
    return summary


def markdown(summary):
    """The summary as a Markdown table and a verdict line."""
    bare = summary.get("bare_resnet50_step_s")
    bare_cell = f"{bare:.3f}" if bare else "-"
    lines = [f"Training feed (TrainingFeed, Task 1 config 512x512, batch 2, {summary['threads']} threads, "
             f"augmentation {'on' if summary['augmentation'] else 'off'}); load average {summary['load_average']}",
             "",
             "| sources | image cache | images | epochs | images/s (median) | ms/image | "
             "bare ResNet-50 step s (batch 2, 512) |",
             "|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['sources']} | {r['cache']} | {r['images']} | {r['passes']} | {r['images_per_s']:.2f} | "
                     f"{r['ms_per_image']:.1f} | {bare_cell} |")
    verdict = "met" if summary["ratio"] >= summary["goal"] else "NOT met"
    lines += ["", f"cached full-size / uncached 512x512 = {summary['ratio']:.2f} (goal >= {summary['goal']}: "
                  f"{verdict}); uncached full-size / 512x512 = {summary['uncached_ratio']:.3f}"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=12, help="images per source size (default 12)")
    parser.add_argument("--threads", type=int, default=2, help="feed worker threads (default 2, as train())")
    parser.add_argument("--repeats", type=int, default=3, help="epochs behind each compared median (default 3)")
    parser.add_argument("--work", help="folder for the generated sources")
    parser.add_argument("--no-augmentation", action="store_true", help="feed without the Task 1 augmentation")
    parser.add_argument("--no-backbone-step", action="store_true", help="skip the bare ResNet-50 step timing")
    parser.add_argument("--no-before", action="store_true", help="skip the row with the earlier skimage resize")
    args = parser.parse_args(argv)
    summary = feed_rates(args.work, args.count, args.threads, not args.no_augmentation,
                         not args.no_backbone_step, before=not args.no_before, repeats=args.repeats)
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
