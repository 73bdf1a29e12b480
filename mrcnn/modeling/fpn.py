"""Feature Pyramid Network on top of the backbone (Matterport's layer names)."""
from keras import layers as KL


def fpn_graph(c2, c3, c4, c5, pyramid_size=256):
    """[C2..C5] -> (rpn_feature_maps [P2, P3, P4, P5, P6], mrcnn_feature_maps [P2, P3, P4, P5]).

    Top-down: each level adds the 2x nearest-upsampled level above to a 1x1 lateral conv of
    its C map, then a 3x3 conv smooths it. P6 subsamples P5 (stride 2) for the RPN's largest anchors.
    """
    p5 = KL.Conv2D(pyramid_size, (1, 1), name="fpn_c5p5")(c5)
    p4 = KL.Add(name="fpn_p4add")([
        KL.UpSampling2D(size=(2, 2), name="fpn_p5upsampled")(p5),
        KL.Conv2D(pyramid_size, (1, 1), name="fpn_c4p4")(c4)])
    p3 = KL.Add(name="fpn_p3add")([
        KL.UpSampling2D(size=(2, 2), name="fpn_p4upsampled")(p4),
        KL.Conv2D(pyramid_size, (1, 1), name="fpn_c3p3")(c3)])
    p2 = KL.Add(name="fpn_p2add")([
        KL.UpSampling2D(size=(2, 2), name="fpn_p3upsampled")(p3),
        KL.Conv2D(pyramid_size, (1, 1), name="fpn_c2p2")(c2)])
    p2 = KL.Conv2D(pyramid_size, (3, 3), padding="same", name="fpn_p2")(p2)
    p3 = KL.Conv2D(pyramid_size, (3, 3), padding="same", name="fpn_p3")(p3)
    p4 = KL.Conv2D(pyramid_size, (3, 3), padding="same", name="fpn_p4")(p4)
    p5 = KL.Conv2D(pyramid_size, (3, 3), padding="same", name="fpn_p5")(p5)
    p6 = KL.MaxPooling2D(pool_size=(1, 1), strides=2, name="fpn_p6")(p5)
    return [p2, p3, p4, p5, p6], [p2, p3, p4, p5]
