"""What the XLA flag of `keras_m3ae.tune_cpu_host()` does to a JAX training step on CPU.

One process compiles our whole M3AE train step (the Keras `train_step`,
AdamW, donated state) twice: once as XLA:CPU compiles it by default, once
without YNNPACK reductions, through a compiler option equivalent to the
`--xla_cpu_experimental_ynn_fusion_type=-reduce` that `tune_cpu_host()` adds
to `XLA_FLAGS` (here applied to one program only; the script does not call
`tune_cpu_host()`, and stops if `XLA_FLAGS` already sets the flag). The two run in alternating blocks of steps on the same
state, so the ratio is measured in one run. It also prints how many of each
program's instructions are YNNPACK fusions with a reduction, and times the
operation behind the flag alone: the bias gradient of the text head, a sum
over the leading axis of a `(512, 30522)` array.

    python benchmarks/investigations/xla_flags_check.py --size base --batch 8 --rounds 4
"""

import argparse
import os
import re
import statistics
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # this folder and benchmarks/ (common, peers)

import common  # noqa: E402
import jax  # noqa: E402
import keras  # noqa: E402
import keras_m3ae  # noqa: E402
import numpy as np  # noqa: E402

from keras_m3ae.host_tuning import XLA_FLAG  # noqa: E402

# The compiler option takes the set of fusion types, not `XLA_FLAGS`' "-reduce":
# this is the default set without reductions. On jaxlib 0.10.2 a test program
# (dot, exp, row and column sums, and their gradients) compiles to the same HLO
# with this option as with `--xla_cpu_experimental_ynn_fusion_type=-reduce`.
OPTION = {"xla_cpu_experimental_ynn_fusion_type":
          "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}


def ynn_reductions(hlo):
    """Number of YNNPACK fusions whose computation contains a reduce."""
    bodies = dict(re.findall(r"\n(%fused_computation[\w.]*) [^{]*\{(.*?)\n\}", hlo, re.S))
    calls = re.findall(r"kind=kCustom, calls=(%[\w.]+)[^\n]*__ynn_fusion", hlo)
    return sum(" reduce(" in bodies.get(name, "") for name in calls)


def column_sum(option, repeats=20):
    x = jax.numpy.asarray(np.random.default_rng(0).normal(size=(512, 30522)).astype("float32"))
    f = jax.jit(lambda x: x.sum(0)).lower(x).compile(option or None)
    jax.block_until_ready(f(x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(x))
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base", choices=sorted(common.SIZES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="blocks per program")
    parser.add_argument("--block-steps", type=int, default=2)
    args = parser.parse_args(argv)
    # This script compares both settings itself: "default" must be XLA's default.
    if XLA_FLAG.split("=")[0] in os.environ.get("XLA_FLAGS", ""):
        parser.error(f"XLA_FLAGS already sets {XLA_FLAG.split('=')[0]}: unset it, this script "
                     f"compares XLA's default with {XLA_FLAG} itself")

    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '')!r}")
    for name, option in (("default", {}), ("-reduce", OPTION)):
        best, median = column_sum(option)
        print(f"sum over axis 0 of (512, 30522), {name:8}: fastest {best * 1e3:.1f} ms, "
              f"median {median * 1e3:.1f} ms")

    model = common.build(args.size)
    model.compile(optimizer=keras_m3ae.optimizers.AdamW(1e-4))
    data = common.batch(model, args.batch)
    model.train_on_batch(data)  # builds the optimizer
    arrays = jax.tree.map(jax.numpy.asarray, data)
    state = [model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                  optimizer_variables=True, metrics_variables=True)]
    jitted = jax.jit(model.train_step, donate_argnums=0)
    lowered = jitted.lower(state[0], (arrays, None, None))
    programs = {}
    for name, option in (("default", {}), ("-reduce", OPTION)):
        start = time.perf_counter()
        programs[name] = lowered.compile(option or None)
        hlo = programs[name].as_text()
        print(f"{name:8}: compiled in {time.perf_counter() - start:.0f} s; YNNPACK fusions with "
              f"a reduction: {ynn_reductions(hlo)} of {hlo.count('__ynn_fusion')} YNNPACK "
              f"fusions")

    def step(program):
        _, state[0] = program(state[0], (arrays, None, None))
        jax.block_until_ready(state[0])

    for program in programs.values():
        step(program)
    times = {name: [] for name in programs}
    order = list(programs)
    for round_ in range(args.rounds):
        for name in order if round_ % 2 == 0 else order[::-1]:
            for _ in range(args.block_steps):
                start = time.perf_counter()
                step(programs[name])
                times[name].append(time.perf_counter() - start)
    cpu = time.process_time()
    print(f"M3AE {args.size}, batch {args.batch}, {args.rounds} alternating blocks of "
          f"{args.block_steps} steps per program")
    for name, values in times.items():
        print(f"{name:8}: fastest {min(values):.3f} s, median {statistics.median(values):.3f} s")
    default, reduce_ = times["default"], times["-reduce"]
    print(f"default / -reduce: fastest {min(default) / min(reduce_):.2f}x, median "
          f"{statistics.median(default) / statistics.median(reduce_):.2f}x "
          f"(process CPU {cpu:.0f} s)")


if __name__ == "__main__":
    main()
