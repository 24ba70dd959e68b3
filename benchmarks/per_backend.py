"""Running a benchmark once per Keras backend, each in its own process.

`KERAS_BACKEND` is fixed when Keras is imported, so a script that compares
backends runs itself again per backend with `--worker`; the worker prints
each result as a line `RESULT <json>`. This module imports no Keras.
"""

import json
import os
import subprocess
import sys


def worker_args(argv):
    """`argv` without `--backends` and its value (both `--backends a,b` and `--backends=a,b`)."""
    forwarded, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--backends"):
            skip = arg == "--backends"  # its value is the next argument
            continue
        forwarded.append(arg)
    return forwarded


def run(script, backends, argv):
    """`{backend: [result, ...]}` from `script --worker` run under each backend.

    A backend whose process fails is reported on stderr with the end of its
    output; the results it printed before failing are kept.
    """
    results = {}
    for backend in backends:
        cmd = [sys.executable, os.path.abspath(script), "--worker"] + worker_args(argv)
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        results[backend] = [json.loads(line[len("RESULT "):])
                            for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode:
            print(f"[{backend}] failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
    return results
