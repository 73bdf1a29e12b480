"""Training machinery: the training loop around the Keras model (compile, callbacks,
checkpoints, history), distribution strategies and the layer sets that a stage trains."""
