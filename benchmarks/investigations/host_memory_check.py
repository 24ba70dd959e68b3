"""What `keras_m3ae/_host_memory.py`'s malloc settings do to a training step on CPU.

The settings act on the whole process from its start, so they cannot be
switched inside one run: this script runs our M3AE train step
(`train_on_batch`, AdamW) in fresh processes that alternate between the
package's default and `KERAS_M3AE_KEEP_MALLOC=1` (glibc's own behaviour),
several rounds each, and prints per setting the step time (fastest and
median over all rounds), the minor page faults per step (4 KB pages the
kernel mapped and zeroed anew) and the peak resident memory. Alternating
rounds spread the drift of a shared machine over both settings. With
`--backend tensorflow`, where the package leaves malloc alone, the first
setting gives the worker the same three settings through `GLIBC_TUNABLES`.

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
SETTINGS = {"package default": {}, "KERAS_M3AE_KEEP_MALLOC=1": {"KERAS_M3AE_KEEP_MALLOC": "1"}}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="jax", choices=["jax", "torch", "tensorflow"])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "base"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="processes per setting")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker(args):
    sys.path[:0] = [HERE, os.path.dirname(HERE)]
    import common  # noqa: E402  (imports keras_m3ae: the settings apply here)
    import keras

    import keras_m3ae

    model = common.build(args.size)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4))
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
        "applied": keras_m3ae._host_memory.applied, "times": times, "faults": faults,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    sys.path[:0] = [HERE, os.path.dirname(HERE)]
    import per_backend

    from keras_m3ae._host_memory import TUNABLES  # for TensorFlow, which the package leaves alone

    forwarded = list(sys.argv[1:] if argv is None else argv)
    results = {name: [] for name in SETTINGS}
    for round_ in range(args.rounds):
        order = list(SETTINGS) if round_ % 2 == 0 else list(SETTINGS)[::-1]
        for name in order:
            # The worker inherits this process's environment.
            os.environ.pop("KERAS_M3AE_KEEP_MALLOC", None)
            os.environ.pop("GLIBC_TUNABLES", None)  # would override the package's settings
            os.environ.update(SETTINGS[name])
            if args.backend == "tensorflow" and name == "package default":
                os.environ["GLIBC_TUNABLES"] = TUNABLES
            runs = per_backend.run(__file__, [args.backend], forwarded)[args.backend]
            if not runs:
                sys.exit(f"the worker ({name}) failed")
            results[name].append(runs[-1])
    note = " (the first setting through GLIBC_TUNABLES)" if args.backend == "tensorflow" else ""
    print(f"M3AE {args.size}, batch {args.batch}, {args.backend} on CPU: {args.rounds} processes "
          f"per setting, alternating, {args.steps} timed steps each after {args.warmup}{note}")
    medians = {}
    for name, runs in results.items():
        times = [t for run in runs for t in run["times"]]
        faults = [f for run in runs for f in run["faults"]]
        medians[name] = statistics.median(times)
        print(f"  {name:26} (applied: {runs[0]['applied']!s:5}) fastest {min(times):.3f} s  "
              f"median {medians[name]:.3f} s  page faults/step {statistics.median(faults):8.0f}  "
              f"peak RSS {max(run['peak_rss_mb'] for run in runs):.0f} MB")
    ours, glibc = (min(t for run in results[name] for t in run["times"]) for name in SETTINGS)
    print(f"  glibc default / package default: fastest {glibc / ours:.2f}x, median "
          f"{medians['KERAS_M3AE_KEEP_MALLOC=1'] / medians['package default']:.2f}x")


if __name__ == "__main__":
    main()
