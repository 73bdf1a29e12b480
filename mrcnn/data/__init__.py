"""Images in, network inputs out: the Dataset base class, the one resize, molding (mean
pixel, image meta), augmentation, the decoded-image cache and the training feed."""
