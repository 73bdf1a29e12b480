"""Recognising weights on disk: an HDF5 weights file (opened with the failures a user can fix,
a missing, truncated or foreign file, turned into errors that name the file) or a folder
written by the export (a SavedModel and its model card).

Kept free of TensorFlow so that a command line can check weights before it imports
TensorFlow and builds a model.
"""
import os

import h5py


CARD_NAME = "model_card.json"  # written beside saved_model.pb by mrcnn.io.saved_model


class WeightsFormatError(ValueError):
    """The file is not a Keras-2 layout HDF5 weights file."""


def open_weights_file(filepath):
    """The file as an open read-only h5py.File; FileNotFoundError or WeightsFormatError, naming
    the file, when it is missing, not HDF5, or damaged (HDF5 refuses a truncated file at open)."""
    filepath = os.fspath(filepath)
    if not os.path.exists(filepath):
        raise FileNotFoundError("weights file %s does not exist" % filepath)
    if not os.path.isfile(filepath) or not h5py.is_hdf5(filepath):
        raise WeightsFormatError("%s is not an HDF5 file, so it cannot be a Keras-2 weights "
                                 "file" % filepath)
    try:
        return h5py.File(filepath, "r")
    except OSError as e:
        raise WeightsFormatError(damaged_message(filepath, e)) from e


def damaged_message(filepath, error):
    """One line for an HDF5 file that h5py cannot read."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ("%s is a damaged HDF5 weights file (%s): it may be truncated by an interrupted copy or "
            "download; copy it again" % (filepath, reason))


def is_exported_model(path):
    """True for a folder written by the export: saved_model.pb and its model card."""
    return (os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb"))
            and os.path.isfile(os.path.join(path, CARD_NAME)))
