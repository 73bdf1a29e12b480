"""Image and instance-mask augmentation for training.

albumentations is the default engine (it moves the image and its masks together). An
imgaug augmenter, Matterport's way, keeps working where imgaug is installed: it is made
deterministic, applied to the image, then to the masks with only the geometric
augmenters switched on.
"""
import copy
import importlib
import logging
import os
import threading

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no online version check at import
import albumentations as A  # noqa: E402
import cv2  # noqa: E402
from albumentations.core.composition import BaseCompose  # noqa: E402

log = logging.getLogger(__name__)

TASKS = (None, "task1", "task2", "task3")

# imgaug augmenters that move pixels and therefore must move the masks too (Matterport's
# list plus Rot90, Crop and Pad); colour, blur and noise augmenters touch the image only.
IMGAUG_MASK_AUGMENTERS = ("Sequential", "SomeOf", "OneOf", "Sometimes", "Fliplr", "Flipud",
                          "CropAndPad", "Crop", "Pad", "Affine", "PiecewiseAffine", "Rot90")


class AugmentationError(ValueError):
    """An augmenter changed the image or mask shape, or is of an unsupported kind."""


class ImgaugNotInstalledError(ImportError):
    """An imgaug augmenter was passed but imgaug cannot be imported."""


def default_augmentation(task=None, seed=None, square=True, colour=True):
    """albumentations pipeline for dermatoscope images: flips, 90-degree rotations, a small
    affine warp (nearest-neighbour for masks) and brightness/contrast/hue jitter for the
    colour variation between dermatoscopes.

    task: None, "task1", "task2" or "task3". Task 2 (small attribute structures) never
        zooms out, so thin structures are not erased by nearest-neighbour shrinking.
    seed: seeds the pipeline's random generators (None: random).
    square: the training images are square (IMAGE_RESIZE_MODE "square" or "crop"); only
        then are 90-degree rotations included, since they swap height and width.
    colour: include the brightness/contrast/hue jitter (False: geometric transforms only).
    """
    if task not in TASKS:
        raise ValueError(f"default_augmentation: task={task!r} must be one of {TASKS}")
    scale = (1.0, 1.1) if task == "task2" else (0.9, 1.1)
    transforms = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if square:
        transforms.append(A.RandomRotate90(p=0.5))
    transforms += [
        A.Affine(scale=scale, translate_percent=(-0.05, 0.05), rotate=(-15, 15),
                 interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.5),
    ]
    if colour:
        transforms += [
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
            A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=15, val_shift_limit=10, p=0.5),
        ]
    return A.Compose(transforms, mask_interpolation=cv2.INTER_NEAREST, seed=seed)


def is_albumentations(augmenter):
    return isinstance(augmenter, (BaseCompose, A.BasicTransform))


def is_imgaug_like(augmenter):
    """Duck-typed imgaug augmenter: it has to_deterministic() and augment_image()."""
    return hasattr(augmenter, "to_deterministic") and hasattr(augmenter, "augment_image")


def apply_augmentation(augmenter, image, masks, seed=None):
    """Augment an image and its instance masks with the same geometry.

    augmenter: an albumentations transform or Compose, an imgaug augmenter, or None.
    image: [H, W, C] (uint8 normally).
    masks: [H, W, N] bool or integer instance masks; N may be 0.
    seed: makes the result a function of the seed: each thread applies its own copy of the
        augmenter (made on first use), reseeded for every call, so concurrent callers do not
        share random state. None: the augmenter's own random state.
    Returns (image, masks) with the input shapes and dtypes.
    """
    if augmenter is None:
        return image, masks
    if masks.ndim != 3 or masks.shape[:2] != image.shape[:2]:
        raise AugmentationError(f"masks must be [H, W, N] with the image's H, W {image.shape[:2]}; "
                                f"got {masks.shape}")
    if is_albumentations(augmenter):
        out_image, out_masks = _apply_albumentations(augmenter, image, masks, seed)
    elif is_imgaug_like(augmenter):
        out_image, out_masks = _apply_imgaug(augmenter, image, masks, seed)
    else:
        raise AugmentationError(f"unsupported augmenter {type(augmenter).__name__}: pass an "
                                "albumentations transform or an imgaug augmenter")
    if out_image.shape != image.shape or out_masks.shape != masks.shape:
        raise AugmentationError(f"augmentation must keep shapes: image {image.shape} -> {out_image.shape}, "
                                f"masks {masks.shape} -> {out_masks.shape} (use square images with "
                                "90-degree rotations, and no resizing augmenters)")
    if masks.dtype == bool:
        out_masks = out_masks > 0
    else:
        out_masks = out_masks.astype(masks.dtype)
    return out_image.astype(image.dtype, copy=False), out_masks


# Per thread: {id(augmenter): (augmenter, its private copy)}. Copying a pipeline costs more than
# applying it to a 256 px image, and reseeding a copy resets all of its random state. The entry
# holds the original, so its id cannot pass to another object while the entry exists.
_THREAD_COPIES = threading.local()


def _private_copy(augmenter):
    """This thread's copy of an albumentations pipeline or transform (made once per thread and
    augmenter); a lone transform is copied too, so threads never reseed a shared object."""
    copies = getattr(_THREAD_COPIES, "copies", None)
    if copies is None:
        copies = _THREAD_COPIES.copies = {}
    entry = copies.get(id(augmenter))
    if entry is None:
        private = copy.deepcopy(augmenter)
        entry = copies[id(augmenter)] = (augmenter, private if isinstance(private, BaseCompose)
                                         else A.Compose([private]))
    return entry[1]


def _apply_albumentations(augmenter, image, masks, seed):
    aug = augmenter
    if seed is not None:
        aug = _private_copy(augmenter)
        aug.set_random_seed(int(seed) % (2 ** 32))
    if masks.shape[-1] == 0:
        # An empty mask stack would be mistaken for a multi-channel image; augment the image alone.
        return aug(image=image)["image"], masks
    out = aug(image=image, mask=masks.astype(np.uint8))
    return out["image"], out["mask"]


def _apply_imgaug(augmenter, image, masks, seed):
    imgaug = import_imgaug()
    aug = augmenter
    if seed is not None:
        aug = augmenter.deepcopy() if hasattr(augmenter, "deepcopy") else copy.deepcopy(augmenter)
        if hasattr(aug, "seed_"):
            aug.seed_(int(seed) % (2 ** 31))
        elif hasattr(aug, "reseed"):
            aug.reseed(int(seed) % (2 ** 31))

    def mask_hook(images, augmenter, parents, default):
        return augmenter.__class__.__name__ in IMGAUG_MASK_AUGMENTERS

    det = aug.to_deterministic()
    out_image = det.augment_image(image)
    if masks.shape[-1] == 0:
        return out_image, masks
    out_masks = det.augment_image(masks.astype(np.uint8), hooks=imgaug.HooksImages(activator=mask_hook))
    return out_image, out_masks


def numpy2_shim_for_imgaug():
    """Restore the numpy names imgaug 0.4.0 reads at import and that numpy 2 removed
    (np.sctypes, np.complex, np.bool). Harmless when they exist."""
    try:
        np.sctypes  # noqa: B018
    except AttributeError:
        np.sctypes = {
            "int": [np.int8, np.int16, np.int32, np.int64],
            "uint": [np.uint8, np.uint16, np.uint32, np.uint64],
            "float": [np.float16, np.float32, np.float64, np.longdouble],
            "complex": [np.complex64, np.complex128, np.clongdouble],
            "others": [bool, object, bytes, str, np.void],
        }
    for name, value in (("complex", complex), ("bool", np.bool_)):
        if name not in np.__dict__:
            setattr(np, name, value)


def import_imgaug():
    """Import imgaug after the numpy-2 shim; a clear error when it is not installed."""
    numpy2_shim_for_imgaug()
    try:
        return importlib.import_module("imgaug")
    except ImportError as e:
        raise ImgaugNotInstalledError(
            "an imgaug augmenter was passed but imgaug cannot be imported "
            f"({e}); install it with `pip install --no-deps imgaug==0.4.0` or pass an "
            "albumentations transform (mrcnn.data.augment.default_augmentation())") from e
