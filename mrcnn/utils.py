"""Matterport's `utils` API: the Dataset base class and the numeric helpers the model,
the data pipeline and the evaluation share (boxes, IoU, NMS, deltas, resizing, anchors, AP).
"""
import logging

import numpy as np
import skimage.color
import skimage.io

log = logging.getLogger(__name__)


############################################################
#  Dataset
############################################################

class Dataset:
    """Base class for datasets (Matterport's API).

    Subclass it, call `add_class` and `add_image` in a load method, override
    `load_mask` (and `load_image` if needed), then call `prepare()` before use.
    """

    def __init__(self, class_map=None):
        self._image_ids = []
        self.image_info = []
        # Background is always the first class
        self.class_info = [{"source": "", "id": 0, "name": "BG"}]
        self.source_class_ids = {}

    def add_class(self, source, class_id, class_name):
        assert "." not in source, "Source name cannot contain a dot"
        for info in self.class_info:
            if info["source"] == source and info["id"] == class_id:
                return  # already registered
        self.class_info.append({"source": source, "id": class_id, "name": class_name})

    def add_image(self, source, image_id, path, **kwargs):
        image_info = {"id": image_id, "source": source, "path": path}
        image_info.update(kwargs)
        self.image_info.append(image_info)

    def image_reference(self, image_id):
        """A string that identifies the image for a person (a path or URL); override as needed."""
        return self.image_info[image_id].get("path", "")

    def prepare(self, class_map=None):
        """Build the internal index tables. Call once all classes and images are added."""
        def clean_name(name):
            return ",".join(name.split(",")[:1])

        self.num_classes = len(self.class_info)
        self.class_ids = np.arange(self.num_classes)
        self.class_names = [clean_name(c["name"]) for c in self.class_info]
        self.num_images = len(self.image_info)
        self._image_ids = np.arange(self.num_images)

        self.class_from_source_map = {f"{info['source']}.{info['id']}": id
                                      for info, id in zip(self.class_info, self.class_ids)}
        self.image_from_source_map = {f"{info['source']}.{info['id']}": id
                                      for info, id in zip(self.image_info, self.image_ids)}

        self.sources = sorted({i["source"] for i in self.class_info})
        self.source_class_ids = {}
        for source in self.sources:
            self.source_class_ids[source] = [i for i, info in enumerate(self.class_info)
                                             if i == 0 or source == info["source"]]

    def map_source_class_id(self, source_class_id):
        """'source.class_id' -> internal class id."""
        return self.class_from_source_map[source_class_id]

    def get_source_class_id(self, class_id, source):
        """Internal class id -> the class id in the given source."""
        info = self.class_info[class_id]
        assert info["source"] == source
        return info["id"]

    @property
    def image_ids(self):
        return self._image_ids

    def source_image_link(self, image_id):
        """The path or URL of the image in its source."""
        return self.image_info[image_id]["path"]

    def load_image(self, image_id):
        """Load the image as a [H, W, 3] uint8 RGB array."""
        image = skimage.io.imread(self.image_info[image_id]["path"])
        if image.ndim != 3:
            image = skimage.color.gray2rgb(image)
        if image.shape[-1] == 4:
            image = image[..., :3]
        return image

    def load_mask(self, image_id):
        """Instance masks [H, W, N] bool and class ids [N] int32.

        The base class has no masks; subclasses override this. An empty result is
        returned here, and logged, so that a forgotten override is visible.
        """
        log.warning("Dataset.load_mask is not overridden; returning no instances.")
        return np.empty([0, 0, 0], dtype=bool), np.empty([0], np.int32)
