"""A quiet start for the demo, `python -m keras_m3ae`.

Loading TensorFlow writes a screen of C++ log lines (absl's pre-init banner,
CUDA stub INFO lines, "failed call to cuInit" on machines without a GPU)
straight to file descriptor 2, before the demo prints anything and beyond the
reach of Python's `logging` and `warnings`; `TF_CPP_MIN_LOG_LEVEL` does not
silence the CUDA stubs. The package imports this module first. When, and
only when, the package is being started as the demo, it loads TensorFlow and
lists its devices with file descriptor 2 captured, then writes back every
captured line that is not one of those known messages, so real errors still
show. `TF_CPP_MIN_LOG_LEVEL=0` turns the filter off and shows everything.

oneDNN is left as it is (`TF_ENABLE_ONEDNN_OPTS` changes numerics); its
notice is an INFO line.
"""

import importlib.util
import os
import re
import sys
import tempfile

_KNOWN_NOISE = re.compile(
    "|".join(
        [
            r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
            # absl INFO lines: `I0000 00:00:1796.93 12600 cudart_stub.cc:31] ...`.
            r"I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ",
            # The continuation of cpu_feature_guard's INFO line.
            r"To enable the following instructions: .* rebuild TensorFlow",
            # No GPU on this machine; not an error for the demo.
            r"E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit",
        ]
    )
)


def is_known_noise(line):
    """Whether a captured stderr line is a known, harmless TensorFlow message."""
    return bool(_KNOWN_NOISE.match(line))


def _started_as_demo():
    # While `python -m keras_m3ae` imports the package, `sys.argv[0]` is
    # "-m"; `sys.orig_argv` names the module being run.
    argv = list(getattr(sys, "orig_argv", ()))
    if sys.argv[:1] != ["-m"] or "-m" not in argv:
        return False
    position = argv.index("-m")
    return argv[position + 1 : position + 2] == ["keras_m3ae"]


def _load_tensorflow_quietly():
    sys.stderr.flush()
    saved = os.dup(2)
    captured = tempfile.TemporaryFile()
    os.dup2(captured.fileno(), 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()  # CUDA initialises (and reports) here
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        captured.seek(0)
        lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
        sys.stderr.write("".join(line for line in lines if not is_known_noise(line)))
        sys.stderr.flush()
        captured.close()


def quiet_demo_start():
    """Loads TensorFlow without its log screen if the demo is starting."""
    if not _started_as_demo() or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if importlib.util.find_spec("tensorflow") is not None:
        _load_tensorflow_quietly()


quiet_demo_start()
