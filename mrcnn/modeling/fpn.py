"""Feature Pyramid Network on top of the backbone (Matterport's layer names)."""
from keras import layers as KL

from mrcnn.modeling.layers import norm_layer


def fpn_graph(c2, c3, c4, c5, pyramid_size=256, norm=None):
    """[C2..C5] -> (rpn_feature_maps [P2, P3, P4, P5, P6], mrcnn_feature_maps [P2, P3, P4, P5]).

    Top-down: each level adds the 2x nearest-upsampled level above to a 1x1 lateral conv of
    its C map, then a 3x3 conv smooths it. P6 subsamples P5 (stride 2) for the RPN's largest anchors.
    norm: a layers.NormSpec; with kind "gn" every conv is followed by a GroupNorm named
    `<conv>_norm` (MMDetection's GN-all FPN, no activation). Matterport's FPN has no
    normalisation, and neither has this one for the BatchNorm kinds.
    """
    def conv(x, size, name, **kwargs):
        x = KL.Conv2D(pyramid_size, size, name=name, **kwargs)(x)
        if norm is not None and norm.kind == "gn":
            x = norm_layer(name + "_norm", norm)(x)
        return x

    p5 = conv(c5, (1, 1), "fpn_c5p5")
    p4 = KL.Add(name="fpn_p4add")([
        KL.UpSampling2D(size=(2, 2), name="fpn_p5upsampled")(p5),
        conv(c4, (1, 1), "fpn_c4p4")])
    p3 = KL.Add(name="fpn_p3add")([
        KL.UpSampling2D(size=(2, 2), name="fpn_p4upsampled")(p4),
        conv(c3, (1, 1), "fpn_c3p3")])
    p2 = KL.Add(name="fpn_p2add")([
        KL.UpSampling2D(size=(2, 2), name="fpn_p3upsampled")(p3),
        conv(c2, (1, 1), "fpn_c2p2")])
    p2 = conv(p2, (3, 3), "fpn_p2", padding="same")
    p3 = conv(p3, (3, 3), "fpn_p3", padding="same")
    p4 = conv(p4, (3, 3), "fpn_p4", padding="same")
    p5 = conv(p5, (3, 3), "fpn_p5", padding="same")
    p6 = KL.MaxPooling2D(pool_size=(1, 1), strides=2, name="fpn_p6")(p5)
    return [p2, p3, p4, p5, p6], [p2, p3, p4, p5]
