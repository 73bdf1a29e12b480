"""Where a training step's time goes: per-loss gradients, and TensorFlow profiler op time by layer and op type.

For each configuration (`synthetic`: lesions.py's synthetic CPU quick start, resnet18 at 256 px,
batch 2; `task1`: the Task 1 config at 512, resnet50, batch 1), one fixed batch of synthetic
lesion files goes through the real feed (no augmentation), then, after warm-up:
  - the whole training step (train_step: forward, gradients of the weighted losses and weight
    decay, SGD update), the training-mode forward pass alone, and the gradient of each loss
    alone (one tf.function each), as medians of --repeats;
  - the bare backbone's training step (same backbone, size and batch; mean-of-C5 loss, SGD);
  - --profile-steps steps under tf.profiler: the op events of the trace summed by op type and
    by layer (the layer name found in the op's name scope), printed as shares of the summed op
    time (ops on the two inter-op threads overlap, so the sum exceeds the wall time).

usage: python bench/profile_step.py [--configs synthetic task1] [--repeats 3] [--profile-steps 2] [--top 15]
"""
import argparse
import collections
import glob
import os
import re
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from speed import bare_resnet50_step, median_seconds  # noqa: E402  (bench/ is on sys.path when run as a script)

CONFIGS = ("synthetic", "task1")


def make_config(name):
    import lesions
    if name == "synthetic":
        return lesions.make_config("segmentation", synthetic=True)
    return lesions.SegmentationConfig(BACKBONE="resnet50", IMAGES_PER_GPU=1, IMAGE_MIN_DIM=512, IMAGE_MAX_DIM=512)


def fixed_batch(config, dataset):
    """One training batch (tuple of numpy inputs) from the real feed, not augmented."""
    from mrcnn.engine import trainer
    feed = trainer.TrainingFeed(dataset, config, shuffle=False, augmentation=None, steps=1, workers=0)
    (inputs,) = feed[0]
    return tuple(inputs)


def layer_names(keras_model):
    names = set()
    for layer in keras_model.layers:
        names.add(layer.name)
        if hasattr(layer, "layers"):
            names.update(sub.name for sub in layer.layers)
    return names


def layer_of(op_name, known):
    """The last scope component of an op name that names a layer (Keras suffixes '_1', '_2' removed)."""
    found = "(other)"
    for part in op_name.split("/")[:-1]:
        base = re.sub(r"(_\d+)+$", "", part)
        if part in known:
            found = part
        elif base in known:
            found = base
    return found


def profile_ops(run, logdir, steps, known):
    """Run `run` `steps` times under the TF profiler; returns (by_layer, by_type, total) in seconds."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        run()
    tf.profiler.experimental.stop()
    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    by_layer = collections.Counter()
    by_type = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                op_name, sep, op_type = name.rpartition(":")
                if not sep or not op_type or "::" in name:
                    continue
                seconds = event.duration_ps * 1e-12 / steps
                by_layer[layer_of(op_name, known)] += seconds
                by_type[op_type] += seconds
    return by_layer, by_type, sum(by_type.values())


def profile_config(name, dataset, args):
    import keras
    import tensorflow as tf
    from mrcnn.modeling import losses as L
    from mrcnn.engine import trainer
    from mrcnn.config import LOSS_NAMES
    from mrcnn.model import MaskRCNN

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    config = make_config(name)
    model = MaskRCNN("training", config, tempfile.mkdtemp(prefix="mrcnn-profile-"))
    keras_model = trainer.compile_model(model, 0.001, "all")
    keras_model.optimizer.build(keras_model.trainable_weights)
    batch = tuple(tf.constant(v) for v in fixed_batch(config, dataset))
    variables = keras_model.trainable_weights

    step = tf.function(lambda x: keras_model.train_step((x,)))
    forward = tf.function(lambda x: keras_model.compute_losses(x, training=True)[0])

    def loss_gradient(loss_name):
        @tf.function
        def grad(x):
            with tf.GradientTape() as tape:
                if loss_name == "weight_decay":
                    loss = L.l2_weight_decay(variables, keras_model.weight_decay)
                else:
                    loss = keras_model.compute_losses(x, training=True)[1][loss_name]
            return [g for g in tape.gradient(loss, variables) if g is not None]
        return grad

    times = {"step": median_seconds(lambda: step(batch)["loss"].numpy(), args.repeats),
             "forward": median_seconds(lambda: forward(batch).numpy(), args.repeats)}
    for loss_name in LOSS_NAMES + ("weight_decay",):
        fn = loss_gradient(loss_name)
        times[f"grad {loss_name}"] = median_seconds(lambda: [g.numpy() for g in fn(batch)], args.repeats)
    logdir = tempfile.mkdtemp(prefix="mrcnn-profile-trace-")
    by_layer, by_type, total = profile_ops(lambda: step(batch)["loss"].numpy(), logdir, args.profile_steps,
                                           layer_names(keras_model))
    # Last: bench/speed.py's bare step clears the Keras session before building the backbone.
    times["bare backbone step"] = bare_resnet50_step(config.BATCH_SIZE, 1, args.repeats, config=config)
    return config, times, by_layer, by_type, total


def report(name, config, times, by_layer, by_type, total, top):
    bare = times["bare backbone step"]
    lines = [f"## {name}: {config.BACKBONE}, {config.IMAGE_SHAPE[0]} px, batch {config.BATCH_SIZE}, "
             f"{config.TRAIN_ROIS_PER_IMAGE} ROIs/image, FC {config.FPN_CLASSIF_FC_LAYERS_SIZE}", "",
             "| measured | s | / bare backbone step |", "|---|---|---|"]
    for key, value in times.items():
        lines.append(f"| {key} | {value:.3f} | {value / bare:.2f} |")
    for title, counter in (("layer", by_layer), ("op type", by_type)):
        lines += ["", f"Profiler, op time by {title} (summed op time {total:.3f} s per step):", "",
                  f"| {title} | s/step | share |", "|---|---|---|"]
        for key, value in counter.most_common(top):
            lines.append(f"| {key} | {value:.3f} | {100 * value / total:.1f} % |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up")
    parser.add_argument("--profile-steps", type=int, default=2, help="training steps under the profiler")
    parser.add_argument("--top", type=int, default=15, help="rows per profiler table")
    args = parser.parse_args(argv)

    from speed import lesion_files, machine
    dataset = lesion_files(tempfile.mkdtemp(prefix="mrcnn-profile-data-"))
    m = machine()
    print(f"Machine: {m['processor']}, {m['cpus']} CPUs, TF {m['tensorflow']}, Keras {m['keras']}; "
          f"load average at start {m['load_average_at_start']}; medians of {args.repeats} after one warm-up.\n")
    for name in args.configs:
        print(report(name, *profile_config(name, dataset, args), args.top), flush=True)
        print()


if __name__ == "__main__":
    main()
