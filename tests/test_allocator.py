"""Importing mrcnn makes TensorFlow's CPU allocator a BFC pool (mrcnn/__init__.py): with the
default allocator a process that has run fit() spent about as much time in page faults as in
the training step. A BFC pool keeps memory statistics, which the default allocator does not."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PROBE = """
import sys
if sys.argv[1] == "mrcnn":
    import mrcnn
import tensorflow as tf
x = tf.random.uniform((256, 256)) @ tf.random.uniform((256, 256))
try:
    info = tf.config.experimental.get_memory_info("CPU:0")
except ValueError:
    print("no-stats")
else:
    print("peak", info["peak"])
"""


@pytest.mark.parametrize("first_import, user_value, expected", [
    ("mrcnn", None, "peak"),          # the package's default
    ("tensorflow", None, "no-stats"),  # TensorFlow alone: the default allocator
    ("mrcnn", "false", "no-stats"),   # the user's setting wins
])
def test_mrcnn_import_selects_the_bfc_cpu_allocator(first_import, user_value, expected):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if user_value is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = user_value
    out = subprocess.run([sys.executable, "-c", PROBE, first_import], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    words = out.stdout.split()
    assert words[0] == expected, out.stdout
    if expected == "peak":
        assert int(words[1]) >= 3 * 256 * 256 * 4  # the three matrices went through the pool
