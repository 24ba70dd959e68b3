import os
import subprocess
import sys

from keras_m3ae import _startup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_entry_point_prints_only_its_own_lines():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user starts it
    result = subprocess.run(
        [sys.executable, "-m", "keras_m3ae", "--help"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m keras_m3ae")
    # No TensorFlow / oneDNN / CUDA / absl lines, nothing at all on stderr.
    assert result.stderr == ""


def test_only_known_tensorflow_messages_are_filtered():
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        "I0000 00:00:1796041146.933937   12600 cudart_stub.cc:31] Could not find cuda drivers on your "
        "machine, GPU will not be used.\n",
        "I0000 00:00:1796041147.028315   12600 cpu_feature_guard.cc:227] This TensorFlow binary is "
        "optimized to use available CPU instructions in performance-critical operations.\n",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with "
        "the appropriate compiler flags.\n",
        "E0000 00:00:1796041158.613966   12600 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
        "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
    ]
    real = [
        "E0000 00:00:1796041158.613966   12600 cuda_driver.cc:152] failed to allocate 80.0G\n",
        "W0000 00:00:1796041158.613966   12600 op_kernel.cc:1828] OP_REQUIRES failed\n",
        "Traceback (most recent call last):\n",
        "ImportError: libcudnn.so.9: cannot open shared object file\n",
        "UserWarning: something the user should see\n",
    ]
    assert all(_startup.is_known_noise(line) for line in noise)
    assert not any(_startup.is_known_noise(line) for line in real)
