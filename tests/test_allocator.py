"""Importing mrcnn makes TensorFlow's CPU allocator a BFC pool (mrcnn/__init__.py): with the
default allocator a process that has run fit() spent about as much time in page faults as in
the training step. A BFC pool keeps memory statistics, which the default allocator does not."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PROBE = """
import os, sys
if sys.argv[1] == "mrcnn":
    import mrcnn
import tensorflow as tf
x = tf.random.uniform((256, 256)) @ tf.random.uniform((256, 256))
try:
    info = tf.config.experimental.get_memory_info("CPU:0")
except ValueError:
    print(os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "unset"), "no-stats")
else:
    print(os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "unset"), "peak", info["peak"])
"""


# Whether TensorFlow alone keeps CPU memory statistics depends on the machine (with oneDNN
# active it pools CPU memory itself), so the test checks what the package promises: it turns
# the pool on unless the user said otherwise, and with it on the statistics are there.
@pytest.mark.parametrize("user_value, expected_setting", [
    (None, "true"),     # the package's default
    ("false", "false"),  # the user's setting wins
])
def test_mrcnn_import_selects_the_bfc_cpu_allocator(user_value, expected_setting):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if user_value is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = user_value
    out = subprocess.run([sys.executable, "-c", PROBE, "mrcnn"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    words = out.stdout.split()
    assert words[0] == expected_setting, out.stdout
    if expected_setting == "true":
        assert words[1] == "peak", out.stdout
        assert int(words[2]) >= 3 * 256 * 256 * 4  # the three matrices went through the pool
