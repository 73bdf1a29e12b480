"""Class-balanced sampling of training images: repeat factors by each image's rarest class.

The idea is detectron2's RepeatFactorTrainingSampler (Gupta et al. 2019, LVIS): with f(c) the
fraction of training images that contain class c and t a threshold, class c gets the repeat
factor r(c) = max(1, sqrt(t / f(c))) and an image the largest r(c) of its classes (1 for an image
without instances). An epoch then shows image i floor(r_i) times plus once more with probability
r_i - floor(r_i) (stochastic rounding, drawn per epoch), so the expected epoch shows each image
r_i times. Classes above the threshold are not thinned; the square root balances without
showing a rare image dozens of times an epoch (a 1 %-class at t = 0.5 is repeated about 7 times).

Written for Task 3 (HAM10000: NV in 67 % of the images, DF in 1.1 %): with uniform sampling the
classifier learns the prior, which balanced accuracy scores as 1/7.
"""
import collections
import logging

import numpy as np

log = logging.getLogger(__name__)


def image_classes(dataset, image_id):
    """The class ids of one image's instances: dataset.image_class_ids(image_id) when the dataset
    knows them without decoding masks (the ISIC datasets do), else load_mask's class ids."""
    known = getattr(dataset, "image_class_ids", None)
    if known is not None:
        return [int(c) for c in known(image_id)]
    return [int(c) for c in np.asarray(dataset.load_mask(image_id)[1]).reshape(-1)]


def repeat_factors(class_lists, threshold):
    """Per image the repeat factor r_i = max over its classes of max(1, sqrt(t / f(c))).

    class_lists: one iterable of class ids per image (background 0 and repeats ignored).
    Returns (factors [N] float64, {class: images containing it}, {class: r(c)}).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    sets = [{int(c) for c in classes if int(c) > 0} for classes in class_lists]
    n = max(1, len(sets))
    counts = collections.Counter(c for s in sets for c in s)
    class_factor = {c: max(1.0, float(np.sqrt(threshold / (k / n)))) for c, k in sorted(counts.items())}
    factors = np.array([max((class_factor[c] for c in s), default=1.0) for s in sets], np.float64)
    return factors, dict(sorted(counts.items())), class_factor


def epoch_repeats(factors, rng):
    """[N] int: floor(r_i), plus one with probability r_i - floor(r_i) (drawn from rng)."""
    factors = np.asarray(factors, np.float64)
    whole = np.floor(factors)
    return (whole + (rng.random(len(factors)) < factors - whole)).astype(np.int64)


def balanced_order(image_ids, factors, seed, epoch):
    """An epoch's image order: each id repeated epoch_repeats times, shuffled; a function of
    (image_ids, factors, seed, epoch) alone."""
    rng = np.random.default_rng([int(seed), int(epoch), 1])
    repeated = np.repeat(np.asarray(image_ids), epoch_repeats(factors, rng))
    return rng.permutation(repeated)


def sampling_summary(class_lists, factors, class_names=None):
    """{class name: {"images": n, "share_uniform": ..., "share_balanced": ..., "repeat_factor": ...}}:
    the fraction of an epoch's image visits that contain each class, with uniform sampling and
    with the repeat factors (in expectation). The two shares sum over classes to more than 1 when
    images hold several classes."""
    sets = [{int(c) for c in classes if int(c) > 0} for classes in class_lists]
    factors = np.asarray(factors, np.float64)
    total_uniform, total_balanced = max(1, len(sets)), max(float(factors.sum()), 1e-12)
    out = {}
    for c in sorted({c for s in sets for c in s}):
        members = np.array([c in s for s in sets])
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        out[name] = {"images": int(members.sum()), "share_uniform": float(members.sum() / total_uniform),
                     "share_balanced": float(factors[members].sum() / total_balanced),
                     "repeat_factor": float(factors[members].max())}
    return out


def log_sampling(summary, threshold, epoch_images):
    """One line per class: images, uniform share -> balanced share, its repeat factor."""
    log.info("Class-balanced sampling (repeat factor, t=%g): about %.0f image visits an epoch", threshold,
             epoch_images)
    for name, s in summary.items():
        log.info("  %-18s %5d images  %5.1f %% of visits uniformly -> %5.1f %% (repeat factor %.2f)", name,
                 s["images"], 100 * s["share_uniform"], 100 * s["share_balanced"], s["repeat_factor"])
