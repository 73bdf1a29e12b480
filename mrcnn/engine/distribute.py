"""Where training runs: the tf.distribute strategy for several GPUs (MirroredStrategy) or several
machines (MultiWorkerMirroredStrategy from TF_CONFIG), and which worker is the chief."""
import json
import os

import tensorflow as tf

_STRATEGIES = {}


def cluster_workers():
    """(number of workers, this worker's index) from TF_CONFIG, or None when it is unset.

    TF_CONFIG is TensorFlow's JSON cluster description, e.g.
    {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}};
    worker 0 is the chief (a separate "chief" task, when listed, is index 0 and the workers follow).
    """
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        spec = json.loads(text)
        cluster, task = spec["cluster"], spec["task"]
        chiefs = list(cluster.get("chief", []))
        workers = list(cluster.get("worker", []))
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"TF_CONFIG is not a valid cluster description ({type(e).__name__}: {e}); expected "
                         '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": N}}')
    if kind not in ("chief", "worker") or not 0 <= index < len(cluster.get(kind, [])):
        raise ValueError(f"TF_CONFIG task {kind!r} {index} is not in its cluster {cluster}")
    return len(chiefs) + len(workers), index + (len(chiefs) if kind == "worker" else 0)


def is_chief():
    """True unless TF_CONFIG makes this process a worker other than the chief."""
    workers = cluster_workers()
    return workers is None or workers[1] == 0


def global_batch_size(config):
    """Images per training step over all replicas: IMAGES_PER_GPU x GPU_COUNT x workers."""
    workers = cluster_workers()
    return config.BATCH_SIZE * (workers[0] if workers else 1)


def distribution_strategy(config):
    """The MirroredStrategy for GPU_COUNT replicas (one per GPU, else one per logical CPU
    device), created once per replica count; with TF_CONFIG set, the
    MultiWorkerMirroredStrategy over its workers (GPU_COUNT GPUs each, or the CPU)."""
    workers = cluster_workers()
    if workers is not None:
        return _multi_worker_strategy(config, workers[0])
    count = int(config.GPU_COUNT)
    if count not in _STRATEGIES:
        gpus = tf.config.list_logical_devices("GPU")
        cpus = tf.config.list_logical_devices("CPU")
        devices = gpus if len(gpus) >= count else cpus
        if len(devices) < count:
            raise ValueError(f"Config.GPU_COUNT={count} but only {len(gpus)} GPU(s) and {len(cpus)} logical CPU "
                             "device(s) are visible; lower GPU_COUNT or configure logical devices")
        _STRATEGIES[count] = tf.distribute.MirroredStrategy([d.name for d in devices[:count]])
    return _STRATEGIES[count]


def _multi_worker_strategy(config, num_workers):
    if "multi_worker" not in _STRATEGIES:
        _STRATEGIES["multi_worker"] = tf.distribute.MultiWorkerMirroredStrategy()
    strategy = _STRATEGIES["multi_worker"]
    expected = int(config.GPU_COUNT) * num_workers
    if strategy.num_replicas_in_sync != expected:
        raise ValueError(f"TF_CONFIG lists {num_workers} workers and Config.GPU_COUNT={config.GPU_COUNT}, so "
                         f"{expected} replicas were expected, but TensorFlow found "
                         f"{strategy.num_replicas_in_sync}: set GPU_COUNT to the GPUs each worker sees "
                         "(1 on CPU), or limit them with CUDA_VISIBLE_DEVICES")
    return strategy
