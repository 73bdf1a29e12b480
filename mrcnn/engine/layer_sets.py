"""Which layers a training stage trains: Matterport's named sets (heads, 3+, 4+, 5+, all) or a
regular expression matched against whole layer names.

Kept free of TensorFlow so that a command line can refuse a bad choice before it pays for
importing TensorFlow and building a model.
"""
import re

# Matterport's named layer sets; the optional `r18_` prefix covers the light ResNet-18.
_STAGES = {3: r"(r18_)?(res3.*)|(r18_)?(bn3.*)|", 4: r"(r18_)?(res4.*)|(r18_)?(bn4.*)|",
           5: r"(r18_)?(res5.*)|(r18_)?(bn5.*)|"}
_HEADS = r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)"
LAYER_REGEX = {
    "heads": _HEADS,
    "3+": _STAGES[3] + _STAGES[4] + _STAGES[5] + _HEADS,
    "4+": _STAGES[4] + _STAGES[5] + _HEADS,
    "5+": _STAGES[5] + _HEADS,
    "all": ".*",
}
CHOICES = ", ".join(LAYER_REGEX)


class LayerSelectionError(ValueError):
    """A layer selection that is not a valid regular expression or matches no layer."""


def layer_regex(layers):
    """The regular expression of a named set, or `layers` itself once it is known to compile."""
    if not isinstance(layers, str) or not layers:
        raise LayerSelectionError(f"layers {layers!r}: expected one of {CHOICES} or a regular expression "
                                  "of layer names")
    if layers in LAYER_REGEX:
        return LAYER_REGEX[layers]
    try:
        re.compile(layers)
    except re.error as e:
        raise LayerSelectionError(f"layers {layers!r} is not a valid regular expression ({e}); expected one of "
                                  f"{CHOICES} or a regular expression of layer names") from e
    return layers


def weighted_layer_names(keras_model):
    """Names of the layers with weights, nested models (rpn_model) looked into, as set_trainable sees them."""
    import keras  # already loaded by whoever built the model
    names = []
    for layer in keras_model.layers:
        if isinstance(layer, keras.Model):
            names += weighted_layer_names(layer)
        elif layer.weights:
            names.append(layer.name)
    return names


def check_matches(keras_model, layers):
    """Raise LayerSelectionError when `layers` selects no layer with weights of `keras_model`
    (a typo such as 'head' would otherwise train nothing, or fail deep inside training)."""
    regex = layer_regex(layers)
    names = weighted_layer_names(keras_model)
    if not any(re.fullmatch(regex, name) for name in names):
        raise LayerSelectionError(f"layers {layers!r} matches no layer of the model; expected one of {CHOICES} "
                                  f"or a regular expression matching whole layer names (e.g. {names[-1]!r})")
