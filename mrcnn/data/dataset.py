"""Matterport's Dataset base class: a registry of classes and images from one or more
sources, with the lookups the training feed and the evaluation need."""
import logging

import numpy as np
import skimage.io

log = logging.getLogger(__name__)


def _source_key(info):
    """'source.id', the key of a class or image in its source."""
    return f"{info['source']}.{info['id']}"


class Dataset:
    """Base class for datasets (Matterport's API).

    Subclass it, call `add_class` and `add_image` in a load method, override
    `load_mask` (and `load_image` if needed), then call `prepare()` before use.
    Class 0 is always the background ("BG", source "").
    """

    def __init__(self, class_map=None):
        del class_map  # part of Matterport's signature, never used
        self.class_info = [dict(source="", id=0, name="BG")]
        self.image_info = []
        self.source_class_ids = {}
        self._image_ids = []

    def add_class(self, source, class_id, class_name):
        """Register a class once; a repeat of (source, class_id) is ignored."""
        if "." in source:
            raise ValueError(f"a dataset source name cannot contain a dot: {source!r}")
        if (source, class_id) not in {(c["source"], c["id"]) for c in self.class_info}:
            self.class_info.append(dict(source=source, id=class_id, name=class_name))

    def add_image(self, source, image_id, path, **kwargs):
        """Register an image; extra keyword arguments are kept in its info dict."""
        self.image_info.append(dict(kwargs, id=image_id, source=source, path=path))

    @property
    def image_ids(self):
        """[num_images] the internal image ids (0 .. num_images - 1)."""
        return self._image_ids

    def image_reference(self, image_id):
        """A string that identifies the image for a person (a path or URL); override as needed."""
        return self.image_info[image_id].get("path", "")

    def prepare(self, class_map=None):
        """Build the lookup tables. Call once all classes and images are added.

        Class names keep only the part before the first comma ("person, man" -> "person").
        """
        del class_map
        self.num_classes = len(self.class_info)
        self.num_images = len(self.image_info)
        self.class_ids = np.arange(self.num_classes)
        self._image_ids = np.arange(self.num_images)
        self.class_names = [c["name"].split(",", 1)[0] for c in self.class_info]
        self.class_from_source_map = {_source_key(c): int(i) for i, c in zip(self.class_ids, self.class_info)}
        self.image_from_source_map = {_source_key(m): int(i) for i, m in zip(self._image_ids, self.image_info)}
        self.sources = sorted(set(c["source"] for c in self.class_info))
        # Per source: the background plus that source's classes, as internal ids.
        owner = np.array([c["source"] for c in self.class_info], dtype=object)
        self.source_class_ids = {
            name: [int(i) for i in np.flatnonzero((owner == name) | (self.class_ids == 0))]
            for name in self.sources}

    def get_source_class_id(self, class_id, source):
        """Internal class id -> the class id in the given source."""
        info = self.class_info[class_id]
        if info["source"] != source:
            raise ValueError(f"class {class_id} comes from source {info['source']!r}, not {source!r}")
        return info["id"]

    def load_image(self, image_id):
        """Load the image as a [H, W, 3] RGB array: grey is repeated into three channels,
        an alpha channel dropped."""
        pixels = skimage.io.imread(self.image_info[image_id]["path"])
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[:, :, None], 3, axis=2)
        return pixels[:, :, :3]

    def load_mask(self, image_id):
        """Instance masks [H, W, N] bool and class ids [N] int32.

        The base class has no masks; subclasses override this. An empty result is
        returned here, and logged, so that a forgotten override is visible.
        """
        log.warning("Dataset.load_mask is not overridden; returning no instances.")
        return np.empty([0, 0, 0], dtype=bool), np.empty([0], np.int32)

    def source_image_link(self, image_id):
        """The path or URL of the image in its source."""
        return self.image_info[image_id]["path"]

    def map_source_class_id(self, source_class_id):
        """'source.class_id' -> internal class id."""
        return self.class_from_source_map[source_class_id]
