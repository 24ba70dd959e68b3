"""Runs the test suite once per Keras backend: jax, tensorflow, torch.

Usage: python tests/run_all_backends.py [pytest args...]
Set M3AE_BACKENDS=jax,torch to run a subset. Exits non-zero if any
backend's run fails; the last line totals all runs. Tests marked
`backend_independent` (pure tf.data, file writing) run in the first
backend's pass only.

Each pass runs on parallel pytest-xdist workers, one per CPU core (at most
4), whole test files per worker. Pass `-n 0` (serial, same process) or any
other `-n N` / `--dist` to choose; `-p no:xdist`, `--pdb` and `--trace` run
serially too.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _marker_expression(args):
    """The -m expression in effect: the last one given, else pyproject's default.

    A later -m overrides an earlier one (and the one of pyproject's addopts),
    so later passes repeat it with backend-independent tests excluded.
    """
    expression = "not slow and not gpu"
    for index, arg in enumerate(args):
        if arg == "-m" and index + 1 < len(args):
            expression = args[index + 1]
        elif arg.startswith("-m") and len(arg) > 2:
            expression = arg[2:]
    return expression


def _is_summary(line):
    """Whether `line` is pytest's final count ("3 passed, 1 skipped in 2.50s").

    Not simply the last line: xdist's workers can still write to the shared
    stderr after it (TensorFlow's absl lines, seen in the torch pass).
    """
    return bool(re.search(r"\d+ (passed|failed|errors?|skipped|deselected)|no tests ran", line)
                and re.search(r" in [\d.]+s\b", line))


def _worker_args(args):
    """`-n` and `--dist` for this run, unless the user's arguments chose.

    Much of a pass is single-threaded (Python, tracing, compiling tiny
    programs), so a second worker uses the core one pass leaves idle (the
    whole run on 2 cores: 1356 s serial, 999 s with 2 workers, measured on
    different commits). Whole files go to one worker (`loadfile`): their module-scoped
    models are built once, and a test file's subprocesses never compete
    with its own other tests. More than 4 workers would mostly add startup
    time and memory (every worker imports TensorFlow, JAX and torch).
    """
    for index, arg in enumerate(args):
        if arg in ("--pdb", "--trace") or arg.startswith(("-n", "--numprocesses", "--dist")):
            return []
        if arg == "-p" and index + 1 < len(args) and args[index + 1] == "no:xdist":
            return []
        if arg == "-pno:xdist":
            return []
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    workers = min(cores, 4)
    return ["-n", str(workers), "--dist", "loadfile"] if workers > 1 else []


def main():
    backends = os.environ.get("M3AE_BACKENDS", "jax,tensorflow,torch").split(",")
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    failed_backends = []
    # One JAX compilation cache for every pass (see tests/conftest.py): the
    # other backends' passes start JAX subprocesses too.
    cache = None
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        cache = tempfile.mkdtemp(prefix="m3ae_test_xla_cache_")
    workers = _worker_args(sys.argv[1:])
    for position, backend in enumerate(backends):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        if cache:
            env["JAX_COMPILATION_CACHE_DIR"] = cache
        print(f"\n===== KERAS_BACKEND={backend} =====", flush=True)
        start = time.time()
        only_dependent = [] if position == 0 else [
            "-m", f"({_marker_expression(sys.argv[1:])}) and not backend_independent"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", *workers, *sys.argv[1:], *only_dependent],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        summary = ""
        for line in proc.stdout:
            print(line, end="", flush=True)
            if _is_summary(line):
                summary = line
        code = proc.wait()
        # 5: every test deselected (e.g. only backend-independent files asked for).
        if code != 0 and not (position > 0 and code == 5):
            failed_backends.append(backend)
        for key in totals:
            found = re.search(rf"(\d+) {key}", summary)
            totals[key] += int(found.group(1)) if found else 0
        print(f"({backend}: {time.time() - start:.0f} s)", flush=True)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)
    if failed_backends:
        print(f"\nFailed under: {', '.join(failed_backends)}")
    print(
        f"all backends: {totals['passed']} passed, {totals['failed'] + totals['error']} failed, "
        f"{totals['skipped']} skipped"
    )
    sys.exit(1 if failed_backends else 0)


if __name__ == "__main__":
    main()
