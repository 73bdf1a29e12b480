"""Files: atomic writes, downloads, Keras-2 HDF5 weights, run folders and the SavedModel export."""
