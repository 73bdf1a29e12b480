"""ResNet backbones with Matterport's layer names (so `mask_rcnn_coco.h5` loads by name),
plus a light ResNet-18-style backbone for CPU demos and tests.

Each graph function takes the image KerasTensor and returns [C1, C2, C3, C4, C5], the
feature maps at strides 2 (C1), 4, 8, 16 and 32. `train_bn` is Matterport's flag, or a
layers.NormSpec (Config.NORM: frozen BatchNorm, training BatchNorm or GroupNorm under the same
layer names).
"""
import keras
from keras import layers as KL

from mrcnn.modeling.layers import NormSpec, norm_layer

# Number of identity blocks after the conv block of stage 4.
STAGE4_BLOCKS = {"resnet50": 5, "resnet101": 22}
# resnet18: basic blocks (two 3x3 convs) per stage, and stage widths.
R18_BLOCKS = (2, 2, 2, 2)
R18_WIDTHS = (64, 128, 256, 512)
R18_PREFIX = "r18_"


def _bottleneck_branch(input_tensor, kernel_size, filters, conv_name, bn_name, strides, use_bias, train_bn):
    """The 1x1 -> kxk -> 1x1 branch of a bottleneck block (layers <conv_name>2a..2c and
    <bn_name>2a..2c), the first conv with `strides`; no ReLU after the last BatchNorm."""
    f1, f2, f3 = filters
    x = KL.Conv2D(f1, (1, 1), strides=strides, name=conv_name + "2a", use_bias=use_bias)(input_tensor)
    x = norm_layer(bn_name + "2a", train_bn)(x)
    x = KL.Activation("relu")(x)
    x = KL.Conv2D(f2, (kernel_size, kernel_size), padding="same", name=conv_name + "2b", use_bias=use_bias)(x)
    x = norm_layer(bn_name + "2b", train_bn)(x)
    x = KL.Activation("relu")(x)
    x = KL.Conv2D(f3, (1, 1), name=conv_name + "2c", use_bias=use_bias)(x)
    return norm_layer(bn_name + "2c", train_bn)(x)


def identity_block(input_tensor, kernel_size, filters, stage, block, use_bias=True, train_bn=True):
    """Bottleneck block whose shortcut is the input itself (Matterport's names)."""
    conv_name = f"res{stage}{block}_branch"
    bn_name = f"bn{stage}{block}_branch"

    x = _bottleneck_branch(input_tensor, kernel_size, filters, conv_name, bn_name, (1, 1), use_bias, train_bn)

    x = KL.Add()([x, input_tensor])
    return KL.Activation("relu", name=f"res{stage}{block}_out")(x)


def conv_block(input_tensor, kernel_size, filters, stage, block, strides=(2, 2), use_bias=True, train_bn=True):
    """Bottleneck block with a 1x1 conv shortcut (Matterport's names)."""
    f3 = filters[2]
    conv_name = f"res{stage}{block}_branch"
    bn_name = f"bn{stage}{block}_branch"

    x = _bottleneck_branch(input_tensor, kernel_size, filters, conv_name, bn_name, strides, use_bias, train_bn)

    shortcut = KL.Conv2D(f3, (1, 1), strides=strides, name=conv_name + "1", use_bias=use_bias)(input_tensor)
    shortcut = norm_layer(bn_name + "1", train_bn)(shortcut)

    x = KL.Add()([x, shortcut])
    return KL.Activation("relu", name=f"res{stage}{block}_out")(x)


def resnet_graph(input_image, architecture, stage5=True, train_bn=True):
    """Matterport's ResNet-50/101 graph. Returns [C1, C2, C3, C4, C5] (C5 None without stage5)."""
    if architecture == "resnet18":
        return resnet18_graph(input_image, train_bn=train_bn)
    if architecture not in STAGE4_BLOCKS:
        raise ValueError(f"unknown ResNet architecture {architecture!r}; use resnet50, resnet101 or resnet18")
    # Stage 1
    x = KL.ZeroPadding2D((3, 3))(input_image)
    x = KL.Conv2D(64, (7, 7), strides=(2, 2), name="conv1", use_bias=True)(x)
    x = norm_layer("bn_conv1", train_bn)(x)
    x = KL.Activation("relu")(x)
    c1 = x = KL.MaxPooling2D((3, 3), strides=(2, 2), padding="same")(x)
    # Stage 2
    x = conv_block(x, 3, [64, 64, 256], stage=2, block="a", strides=(1, 1), train_bn=train_bn)
    x = identity_block(x, 3, [64, 64, 256], stage=2, block="b", train_bn=train_bn)
    c2 = x = identity_block(x, 3, [64, 64, 256], stage=2, block="c", train_bn=train_bn)
    # Stage 3
    x = conv_block(x, 3, [128, 128, 512], stage=3, block="a", train_bn=train_bn)
    for block in "bcd":
        x = identity_block(x, 3, [128, 128, 512], stage=3, block=block, train_bn=train_bn)
    c3 = x
    # Stage 4
    x = conv_block(x, 3, [256, 256, 1024], stage=4, block="a", train_bn=train_bn)
    for i in range(STAGE4_BLOCKS[architecture]):
        x = identity_block(x, 3, [256, 256, 1024], stage=4, block=chr(98 + i), train_bn=train_bn)
    c4 = x
    # Stage 5
    if stage5:
        x = conv_block(x, 3, [512, 512, 2048], stage=5, block="a", train_bn=train_bn)
        x = identity_block(x, 3, [512, 512, 2048], stage=5, block="b", train_bn=train_bn)
        c5 = identity_block(x, 3, [512, 512, 2048], stage=5, block="c", train_bn=train_bn)
    else:
        c5 = None
    return [c1, c2, c3, c4, c5]


def basic_block(input_tensor, filters, stage, block, strides=(1, 1), train_bn=True):
    """ResNet-18 basic block: two 3x3 convs; a 1x1 conv shortcut when the shape changes."""
    conv_name = f"{R18_PREFIX}res{stage}{block}_branch"
    bn_name = f"{R18_PREFIX}bn{stage}{block}_branch"
    x = KL.Conv2D(filters, (3, 3), strides=strides, padding="same", name=conv_name + "2a")(input_tensor)
    x = norm_layer(bn_name + "2a", train_bn)(x)
    x = KL.Activation("relu")(x)
    x = KL.Conv2D(filters, (3, 3), padding="same", name=conv_name + "2b")(x)
    x = norm_layer(bn_name + "2b", train_bn)(x)
    shortcut = input_tensor
    if tuple(strides) != (1, 1) or input_tensor.shape[-1] != filters:
        shortcut = KL.Conv2D(filters, (1, 1), strides=strides, name=conv_name + "1")(input_tensor)
        shortcut = norm_layer(bn_name + "1", train_bn)(shortcut)
    x = KL.Add()([x, shortcut])
    return KL.Activation("relu", name=f"{R18_PREFIX}res{stage}{block}_out")(x)


def resnet18_graph(input_image, train_bn=True):
    """Light ResNet-18-style backbone; its own layer names (prefix `r18_`), so Matterport's
    ResNet weights never load into it by accident. Returns [C1, C2, C3, C4, C5]."""
    x = KL.ZeroPadding2D((3, 3))(input_image)
    x = KL.Conv2D(R18_WIDTHS[0], (7, 7), strides=(2, 2), name=R18_PREFIX + "conv1")(x)
    x = norm_layer(R18_PREFIX + "bn_conv1", train_bn)(x)
    x = KL.Activation("relu")(x)
    c1 = x = KL.MaxPooling2D((3, 3), strides=(2, 2), padding="same")(x)
    outputs = [c1]
    for stage, (blocks, width) in enumerate(zip(R18_BLOCKS, R18_WIDTHS), start=2):
        for i in range(blocks):
            strides = (2, 2) if stage > 2 and i == 0 else (1, 1)
            x = basic_block(x, width, stage, chr(97 + i), strides=strides, train_bn=train_bn)
        outputs.append(x)
    return outputs


def build_backbone(input_image, config):
    """[C2, C3, C4, C5] for config.BACKBONE (a name or a callable returning [C1..C5]). A callable
    gets Matterport's train_bn (True for NORM "bn" and "gn") and picks its own layers."""
    if callable(config.BACKBONE):
        _, c2, c3, c4, c5 = config.BACKBONE(input_image, stage5=True, train_bn=config.norm() != "frozen_bn")
    else:
        _, c2, c3, c4, c5 = resnet_graph(input_image, config.BACKBONE, stage5=True, train_bn=NormSpec.of(config))
    return [c2, c3, c4, c5]


def backbone_model(config, image_shape=None):
    """The bare backbone as a Model image -> [C2, C3, C4, C5] (benchmarks, feature checks)."""
    shape = list(image_shape) if image_shape is not None else [None, None, config.IMAGE_CHANNEL_COUNT]
    image = KL.Input(shape=shape, name="input_image")
    return keras.Model(image, build_backbone(image, config), name=f"backbone_{config.BACKBONE}")
