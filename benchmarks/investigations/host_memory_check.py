"""What the glibc malloc settings of `keras_m3ae.tune_cpu_host()` do to a training step on CPU.

The settings act on the whole process (and `M_ARENA_MAX` only on threads
that have not allocated yet), so they cannot be switched inside one run:
this script runs our M3AE train step (`train_on_batch`, AdamW) in fresh
processes that alternate between `tune_cpu_host(xla_flag=False)` (the malloc
settings only) and glibc's own behaviour, several rounds each, and prints
per setting the step time (fastest and median over all rounds), the minor
page faults per step (4 KB pages the kernel mapped and zeroed anew) and the
peak resident memory. Alternating rounds spread the drift of a shared
machine over both settings. `--xla-flag` adds the XLA flag in both settings
(as when both were applied at import, before `tune_cpu_host()`). With
`--backend tensorflow`, where `tune_cpu_host()` leaves malloc alone, the
first setting gives the worker the same three settings through
`GLIBC_TUNABLES` (`host_tuning.MALLOC_TUNABLES`).

    python benchmarks/investigations/host_memory_check.py --size small --batch 4 --rounds 3
    python benchmarks/investigations/host_memory_check.py --backend torch --size small --rounds 2
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TUNED, GLIBC = "tune_cpu_host() malloc", "glibc default"
SETTINGS = (TUNED, GLIBC)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="jax", choices=["jax", "torch", "tensorflow"])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "base"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="processes per setting")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--xla-flag", action="store_true",
                        help="JAX: also add tune_cpu_host()'s XLA flag, in both settings")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setting", choices=SETTINGS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker(args):
    import keras_m3ae

    # First, before anything allocates on other threads or compiles.
    tuning = keras_m3ae.tune_cpu_host(xla_flag=args.xla_flag, malloc=args.setting == TUNED,
                                      verbose=False)
    if args.setting == TUNED and not tuning.malloc:
        applied = "GLIBC_TUNABLES" if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "") \
            else f"no: {tuning.reasons['malloc']}"
    else:
        applied = "yes" if tuning.malloc else "no"
    sys.path[:0] = [HERE, os.path.dirname(HERE)]
    import common  # noqa: E402
    import keras

    model = common.build(args.size)
    model.compile(optimizer=keras_m3ae.optimizers.AdamW(1e-4))
    data = common.batch(model, args.batch)
    for _ in range(args.warmup):
        model.train_on_batch(data)
    times, faults = [], []
    for _ in range(args.steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        model.train_on_batch(data)
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print("RESULT " + json.dumps({
        "applied": applied, "xla_flag": tuning.xla_flag, "times": times, "faults": faults,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    sys.path[:0] = [HERE, os.path.dirname(HERE)]
    import per_backend

    from keras_m3ae.host_tuning import MALLOC_TUNABLES  # for TensorFlow, which the call skips

    forwarded = list(sys.argv[1:] if argv is None else argv)
    results = {name: [] for name in SETTINGS}
    for round_ in range(args.rounds):
        order = list(SETTINGS) if round_ % 2 == 0 else list(SETTINGS)[::-1]
        for name in order:
            # The worker inherits this process's environment.
            os.environ.pop("GLIBC_TUNABLES", None)  # tune_cpu_host() would keep it
            if args.backend == "tensorflow" and name == TUNED:
                os.environ["GLIBC_TUNABLES"] = MALLOC_TUNABLES
            runs = per_backend.run(__file__, [args.backend],
                                   forwarded + ["--setting", name])[args.backend]
            if not runs:
                sys.exit(f"the worker ({name}) failed")
            results[name].append(runs[-1])
    note = " (the first setting through GLIBC_TUNABLES)" if args.backend == "tensorflow" else ""
    print(f"M3AE {args.size}, batch {args.batch}, {args.backend} on CPU: {args.rounds} processes "
          f"per setting, alternating, {args.steps} timed steps each after {args.warmup}{note}; "
          f"XLA flag {'on' if results[TUNED][0]['xla_flag'] else 'off'}")
    medians = {}
    for name, runs in results.items():
        times = [t for run in runs for t in run["times"]]
        faults = [f for run in runs for f in run["faults"]]
        medians[name] = statistics.median(times)
        print(f"  {name:22} (malloc settings: {runs[0]['applied']}) fastest {min(times):.3f} s  "
              f"median {medians[name]:.3f} s  page faults/step {statistics.median(faults):8.0f}  "
              f"peak RSS {max(run['peak_rss_mb'] for run in runs):.0f} MB")
    tuned, glibc = (min(t for run in results[name] for t in run["times"]) for name in SETTINGS)
    print(f"  {GLIBC} / {TUNED}: fastest {glibc / tuned:.2f}x, median "
          f"{medians[GLIBC] / medians[TUNED]:.2f}x")


if __name__ == "__main__":
    main()
