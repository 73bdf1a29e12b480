"""Mask R-CNN for TensorFlow 2.21 / Keras 3 with Matterport's public API and weight layout.

Importing the package before TensorFlow allocates its first tensor makes TensorFlow's CPU
allocator a BFC pool (TF_CPU_ALLOCATOR_USE_BFC, unless the environment already sets it): with
the default allocator, a training process that has run Keras' fit() spends as much time in
the kernel (page faults on freshly mapped memory) as in the step itself (docs/benchmarks.md, "Training
step: where the time goes"). tests/test_allocator.py checks that the pool is on.
"""
import os

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
