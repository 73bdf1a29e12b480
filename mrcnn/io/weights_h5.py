"""Read and write Matterport's Keras-2 HDF5 weights layout from a Keras 3 model.

Keras 3 only saves its own ``.weights.h5`` layout (weights keyed by object path), which
cannot be loaded by layer name. Matterport's ``mask_rcnn_coco.h5`` and every checkpoint
this project writes use the Keras-2 ``Model.save_weights()`` layout instead:

    /                     attrs layer_names (S<n> array), backend, keras_version
    /<layer>              attr weight_names: S<n> array, or an empty float64 array
    /<layer>/<weight>     float32 dataset; the weight name holds a '/', so
                          /conv1/conv1/kernel:0, /rpn_model/rpn_conv_shared/kernel:0

Keras-2 weight names are derived from the layer structure, not from Keras 3 variable
paths: a TimeDistributed wrapper names its inner layer's weights after itself, and a
nested model (``rpn_model``) is one entry whose weights carry its inner layers' names.
"""
import dataclasses
import logging
import os

import h5py
import keras
import numpy as np

from mrcnn.config import HEAD_LAYERS
from mrcnn.io import atomic
from mrcnn.io.weights_file import WeightsFormatError, damaged_message, open_weights_file

logger = logging.getLogger(__name__)


# HDF5 object headers hold at most 64 KiB of attributes; Keras 2.2+ split longer name
# lists into attrs <name>0, <name>1, ... and so do reader and writer here.
_MAX_ATTR_BYTES = 64512


class WeightsMismatchError(ValueError):
    """The file's weights do not fit the model (shape or weight count)."""

    def __init__(self, message, layer=None, weight=None, model_shape=None, file_shape=None,
                 mismatched_layers=()):
        super().__init__(message)
        self.layer = layer
        self.weight = weight
        self.model_shape = model_shape
        self.file_shape = file_shape
        self.mismatched_layers = list(mismatched_layers)


class NormMismatchError(WeightsMismatchError):
    """The file's normalisation layers are BatchNorm where the model's are GroupNorm, or the
    reverse (Config.NORM differs from the one the weights were trained with). `layer` is None:
    the message is the whole story, one line."""


@dataclasses.dataclass
class WeightsLoadReport:
    """What load_weights_h5() did, by top-level layer name."""

    filepath: str
    loaded: list
    missing_in_file: list
    unused_in_file: list
    excluded: list
    skipped_mismatch: list
    num_weights: int

    def summary(self):
        return ("loaded %d layers (%d weights) from %s; %d excluded, %d skipped for mismatch, "
                "%d model layers missing in file, %d file layers unused"
                % (len(self.loaded), self.num_weights, self.filepath, len(self.excluded),
                   len(self.skipped_mismatch), len(self.missing_in_file),
                   len(self.unused_in_file)))

    def as_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Weight:
    name: str  # Keras-2 name, e.g. "mrcnn_class_conv1/kernel:0"
    variable: object
    trainable: bool


# --------------------------------------------------------------------------- model side

def _as_keras_model(model):
    """Accept a keras.Model or an object holding one in `.keras_model` (MaskRCNN)."""
    inner = getattr(model, "keras_model", None)
    return inner if inner is not None else model


def _trainable_kind_ids(layer):
    """ids of the variables created as trainable, whatever layer.trainable is now.

    Freezing a Keras 3 layer flips `variable.trainable`, but the variable stays in its
    creator's `_trainable_variables` list; Keras 2 stored the created kind.
    """
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        return None
    ids = set()
    for sub in flatten():
        ids.update(id(v) for v in getattr(sub, "_trainable_variables", ()))
    return ids


def _scoped_weights(layer, scope):
    """Yield (keras2_name, variable, trainable) for `layer`, its weights named under `scope`."""
    if isinstance(layer, keras.Model):
        for sub in layer.layers:
            yield from _scoped_weights(sub, sub.name)
    elif isinstance(layer, keras.layers.Wrapper):
        yield from _scoped_weights(layer.layer, scope)
    else:
        kind_ids = _trainable_kind_ids(layer)
        for v in layer.weights:
            trainable = (id(v) in kind_ids) if kind_ids is not None else bool(v.trainable)
            yield "%s/%s:0" % (scope, v.name), v, trainable


def _layer_weights(layer):
    """A top-level layer's weights in Keras-2 order: trainable kind first, then the rest."""
    found = list(_scoped_weights(layer, layer.name))
    ordered = [w for w in found if w[2]] + [w for w in found if not w[2]]
    names = [n for n, _, _ in ordered]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError("layer %r has several weights named %s; the Keras-2 layout needs "
                         "unique weight names per layer" % (layer.name, dupes))
    return [_Weight(n, v, t) for n, v, t in ordered]


def _model_entries(keras_model):
    """[(layer_name, [_Weight])] for every top-level layer, in model.layers order."""
    return [(layer.name, _layer_weights(layer)) for layer in keras_model.layers]


def layer_names(keras_model):
    """All top-level layer names in model.layers order (InputLayers and weightless included)."""
    return [layer.name for layer in _as_keras_model(keras_model).layers]


def model_weight_layout(keras_model):
    """The model's weights as the Keras-2 file would list them, one entry per weighted layer.

    Returns [{"name": layer, "weights": [{"name": "<layer>/kernel:0", "shape": [...],
    "trainable": bool}]}] in model.layers order; `trainable` is the kind the variable was
    created as (BatchNorm moving stats: False), not whether the layer is frozen now.
    """
    layout = []
    for name, weights in _model_entries(_as_keras_model(keras_model)):
        if weights:
            layout.append({"name": name, "weights": [
                {"name": w.name, "shape": [int(d) for d in w.variable.shape],
                 "trainable": w.trainable} for w in weights]})
    return layout


# --------------------------------------------------------------------------- file side

def _decode(value):
    return value.decode("utf8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _read_name_list(attrs, key):
    """A list of names stored as attr `key` or chunked as `key0`, `key1`, ...; None if absent."""
    if key in attrs:
        chunks = [attrs[key]]
    elif "%s0" % key in attrs:
        chunks, i = [], 0
        while "%s%d" % (key, i) in attrs:
            chunks.append(attrs["%s%d" % (key, i)])
            i += 1
    else:
        return None
    names = []
    for chunk in chunks:
        arr = np.asarray(chunk)
        if arr.dtype.kind in "fiu":  # h5py stores an empty list as an empty float64 array
            continue
        names.extend(_decode(x) for x in arr.reshape(-1))
    return names


def _open_keras2_root(f, filepath):
    """The group holding `layer_names`: the file root, or /model_weights of a full-model save."""
    if "layer_names" in f.attrs or "layer_names0" in f.attrs:
        return f
    wrapped = f.get("model_weights")
    if isinstance(wrapped, h5py.Group) and ("layer_names" in wrapped.attrs
                                            or "layer_names0" in wrapped.attrs):
        return wrapped
    hint = ""
    if "layers" in f and "vars" in f:
        hint = (" It looks like a Keras 3 '.weights.h5' file (weights keyed by object path), "
                "which cannot be loaded by layer name; load it with keras_model.load_weights().")
    raise WeightsFormatError("%s has no 'layer_names' attribute, so it is not a Keras-2 layout "
                             "weights file (as written by Matterport or save_weights_h5()).%s"
                             % (filepath, hint))


def _file_layers(root, filepath):
    """[(layer_name, [(weight_name, dataset)])] in the file's storage order."""
    out = []
    for lname in _read_name_list(root.attrs, "layer_names"):
        group = root.get(lname)
        if not isinstance(group, h5py.Group):
            raise WeightsFormatError("%s lists layer %r in layer_names but has no group for it"
                                     % (filepath, lname))
        wnames = _read_name_list(group.attrs, "weight_names") or []
        datasets = []
        for wname in wnames:
            ds = group.get(wname)
            if not isinstance(ds, h5py.Dataset):
                raise WeightsFormatError("%s: layer %r lists weight %r but has no dataset %s/%s"
                                         % (filepath, lname, wname, lname, wname))
            datasets.append((wname, ds))
        out.append((lname, datasets))
    return out


# --------------------------------------------------------------------------- loading

class _Mismatch:
    def __init__(self, layer, weight=None, model_shape=None, file_shape=None, detail=None):
        self.layer, self.weight = layer, weight
        self.model_shape, self.file_shape = model_shape, file_shape
        self.detail = detail


def _pair_weights(lname, model_weights, file_weights):
    """Pair a layer's model weights with the file's: by name when the names agree, else by
    position as Keras 2 did. Returns (pairs, mismatch or None)."""
    if len(model_weights) != len(file_weights):
        return [], _Mismatch(lname, detail="layer %r has %d weights in the model but %d in the "
                                           "file" % (lname, len(model_weights), len(file_weights)))
    by_name = {wname: ds for wname, ds in file_weights}
    if sorted(by_name) == sorted(w.name for w in model_weights):
        pairs = [(w, w.name, by_name[w.name]) for w in model_weights]
    else:
        logger.debug("layer %r: weight names differ from the file's, pairing them by position",
                     lname)
        pairs = [(w, wname, ds) for w, (wname, ds) in zip(model_weights, file_weights)]
    for w, wname, ds in pairs:
        model_shape = tuple(int(d) for d in w.variable.shape)
        if model_shape != tuple(ds.shape):
            return [], _Mismatch(lname, wname, model_shape, tuple(ds.shape))
    return pairs, None


def _raise_mismatch(mismatches, filepath):
    first = mismatches[0]
    names = [m.layer for m in mismatches]
    if first.detail:
        what = first.detail
    else:
        what = ("layer %r weight %r has shape %s in the model but %s in the file"
                % (first.layer, first.weight, first.model_shape, first.file_shape))
    suggest = list(names)
    if any(n in HEAD_LAYERS for n in names):
        suggest = list(HEAD_LAYERS) + [n for n in names if n not in HEAD_LAYERS]
    others = ""
    if len(names) > 1:
        others = " (%d layers mismatch: %s)" % (len(names), ", ".join(names))
    raise WeightsMismatchError(
        "Weights in %s do not fit the model: %s%s. Nothing was loaded; to load the other layers "
        "pass exclude=%r (or skip_mismatch=True)." % (filepath, what, others, suggest),
        layer=first.layer, weight=first.weight, model_shape=first.model_shape,
        file_shape=first.file_shape, mismatched_layers=names)


_NORM_NAMES = {"BatchNorm": {"gamma", "beta", "moving_mean", "moving_variance"}, "GroupNorm": {"gamma", "beta"}}


def _norm_kind(weight_names):
    """"BatchNorm", "GroupNorm" or None (not a normalisation layer), from a layer's weight names
    ('bn_conv1/moving_mean:0' ...)."""
    bare = {name.rsplit("/", 1)[-1].split(":", 1)[0] for name in weight_names}
    for kind, names in _NORM_NAMES.items():
        if bare == names:
            return kind
    return None


def _check_norms(model_entries, file_layers, exclude, filepath):
    """Refuse, in one line, BatchNorm weights for GroupNorm layers of the same name (or the
    reverse): it means another Config.NORM, not a layer to skip."""
    model_kinds = {name: _norm_kind(w.name for w in weights) for name, weights in model_entries}
    clashes = []
    for lname, file_weights in file_layers:
        if lname in exclude or model_kinds.get(lname) is None:
            continue
        file_kind = _norm_kind(wname for wname, _ in file_weights)
        if file_kind is not None and file_kind != model_kinds[lname]:
            clashes.append((lname, file_kind, model_kinds[lname]))
    if not clashes:
        return
    lname, file_kind, model_kind = clashes[0]
    wanted = "--set NORM=gn" if file_kind == "GroupNorm" else "--set NORM=bn, or NORM=frozen_bn"
    more = f" and {len(clashes) - 1} more" if len(clashes) > 1 else ""
    raise NormMismatchError(
        f"{filepath} holds {file_kind} layers ({lname}{more}) where the model has {model_kind}: the weights "
        f"were trained with another normalisation; nothing was loaded; build the model with theirs ({wanted}), "
        f"or exclude those {len(clashes)} layers to start them afresh",
        mismatched_layers=[c[0] for c in clashes])


def _plan_by_name(model_entries, file_layers, exclude):
    model_index = {name: weights for name, weights in model_entries}
    file_names = {name for name, _ in file_layers}
    plan, mismatches, unused = [], [], []
    for lname, file_weights in file_layers:
        if lname in exclude:
            continue
        if lname not in model_index:
            if file_weights:
                unused.append(lname)
            continue
        model_weights = model_index[lname]
        if not model_weights and not file_weights:
            continue
        _plan_layer(plan, mismatches, lname, model_weights, file_weights)
    missing = [name for name, weights in model_entries
               if weights and name not in file_names and name not in exclude]
    return plan, mismatches, missing, unused


def _plan_layer(plan, mismatches, name, model_weights, file_weights):
    """Add one layer's weight pairs to `plan`, or its shape mismatch to `mismatches`."""
    pairs, mismatch = _pair_weights(name, model_weights, file_weights)
    if mismatch:
        mismatches.append(mismatch)
    else:
        plan.append((name, pairs))


def _plan_topological(model_entries, file_layers, exclude, filepath):
    model_weighted = [(n, w) for n, w in model_entries if w]
    file_weighted = [(n, w) for n, w in file_layers if w]
    if len(model_weighted) != len(file_weighted):
        raise WeightsMismatchError(
            "%s holds %d layers with weights but the model has %d; the layers differ, so load "
            "by name (by_name=True) instead" % (filepath, len(file_weighted), len(model_weighted)))
    plan, mismatches = [], []
    for (mname, model_weights), (_, file_weights) in zip(model_weighted, file_weighted):
        if mname in exclude:
            continue
        _plan_layer(plan, mismatches, mname, model_weights, file_weights)
    return plan, mismatches, [], []


def load_weights_h5(keras_model, filepath, by_name=True, exclude=None, skip_mismatch=False):
    """Load a Keras-2 layout HDF5 weights file (e.g. mask_rcnn_coco.h5) into a Keras 3 model.

    by_name=True matches top-level layers by name; layers only in the file or only in the
    model are reported, not errors; layers named in `exclude` are not touched. by_name=False
    pairs the weighted layers in order, as Keras 2 did. Every shape is checked before any
    weight is assigned, so a WeightsMismatchError leaves the model unchanged (NormMismatchError:
    BatchNorm weights for GroupNorm layers or the reverse, by name); with
    skip_mismatch=True mismatched layers are skipped whole instead.
    Returns a WeightsLoadReport.
    """
    keras_model = _as_keras_model(keras_model)
    filepath = os.fspath(filepath)
    exclude = {exclude} if isinstance(exclude, str) else set(exclude or ())
    model_entries = _model_entries(keras_model)
    with open_weights_file(filepath) as f:
        root = _open_keras2_root(f, filepath)
        file_layers = _file_layers(root, filepath)
        if by_name:
            if not skip_mismatch:
                _check_norms(model_entries, file_layers, exclude, filepath)
            plan, mismatches, missing, unused = _plan_by_name(model_entries, file_layers, exclude)
        else:
            plan, mismatches, missing, unused = _plan_topological(
                model_entries, file_layers, exclude, filepath)
        if mismatches and not skip_mismatch:
            _raise_mismatch(mismatches, filepath)
        for m in mismatches:
            logger.warning("skipping layer %r: %s", m.layer, m.detail or (
                "weight %r is %s in the model, %s in the file"
                % (m.weight, m.model_shape, m.file_shape)))
        # Read everything before assigning: a read error must not leave a half-loaded model.
        try:
            values = [(w.variable, ds[()]) for _, pairs in plan for w, _, ds in pairs]
        except OSError as e:
            raise WeightsFormatError(damaged_message(filepath, e)) from e
    for variable, value in values:
        variable.assign(np.asarray(value, dtype=variable.dtype))

    known = {n for n, _ in model_entries} | {n for n, _ in file_layers}
    unknown = sorted(exclude - known)
    if unknown:
        logger.warning("exclude names no layer of the model or the file: %s", unknown)
    report = WeightsLoadReport(
        filepath=filepath, loaded=[name for name, _ in plan], missing_in_file=missing,
        unused_in_file=unused, excluded=sorted(exclude & known),
        skipped_mismatch=[m.layer for m in mismatches], num_weights=len(values))
    logger.info("%s", report.summary())
    return report


# --------------------------------------------------------------------------- saving

def _fixed_bytes(strings):
    """Names as a fixed-length byte-string array (S<n>), as Keras 2.0.8 + h5py 2 wrote them."""
    encoded = [s.encode("utf8") for s in strings]
    return np.array(encoded, dtype="S%d" % max([1] + [len(b) for b in encoded]))


def _write_name_list(attrs, key, names):
    """Write a name list attr; an empty list becomes an empty float64 array like Keras 2's."""
    if not names:
        attrs[key] = np.zeros((0,), dtype=np.float64)
        return
    data = _fixed_bytes(names)
    if data.nbytes <= _MAX_ATTR_BYTES:
        attrs[key] = data
        return
    n_chunks = -(-data.nbytes // _MAX_ATTR_BYTES)
    for i, chunk in enumerate(np.array_split(data, n_chunks)):
        attrs["%s%d" % (key, i)] = chunk


def _variable_value(variable):
    """A variable's value as a float32 numpy array."""
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float32)


def _write_layout(f, model_entries, keras_version):
    _write_name_list(f.attrs, "layer_names", [name for name, _ in model_entries])
    f.attrs["backend"] = np.bytes_(b"tensorflow")
    f.attrs["keras_version"] = np.bytes_(keras_version.encode("utf8"))
    for lname, weights in model_entries:
        group = f.create_group(lname)
        _write_name_list(group.attrs, "weight_names", [w.name for w in weights])
        for w in weights:
            group.create_dataset(w.name, data=_variable_value(w.variable))


def save_weights_h5(keras_model, filepath, keras_version="2.0.8"):
    """Save the model's weights in Matterport's Keras-2 layout, atomically.

    The file is written to a temporary name in the same folder, synced, then renamed over
    `filepath`, so an interrupted save leaves the previous file (if any) intact.
    """
    keras_model = _as_keras_model(keras_model)
    filepath = os.path.abspath(os.fspath(filepath))
    folder = os.path.dirname(filepath)
    if not os.path.isdir(folder):
        raise FileNotFoundError("cannot save weights to %s: folder %s does not exist"
                                % (filepath, folder))
    model_entries = _model_entries(keras_model)
    with atomic.atomic_path(filepath) as tmp, h5py.File(tmp, "w") as f:
        _write_layout(f, model_entries, keras_version)
    n_weights = sum(len(w) for _, w in model_entries)
    logger.info("saved %d layers (%d weights) to %s", len(model_entries), n_weights, filepath)
