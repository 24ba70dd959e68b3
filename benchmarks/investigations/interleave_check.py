"""Does our JAX step slow down when the reference's steps run between ours?

Three contenders, each a whole training step that donates its state: our
`M3AEPretrainer` through `train_on_batch`, the same Keras `train_step`
compiled and called directly (no trainer around it), and the reference Flax
M3AE (`peers.py` builds both, same sizes and optimizer). Each runs
`--steps` single timed steps in three protocols:

- blocks: all steps of one contender, then the next (ours first);
- interleaved: our compiled step, a reference step, our `train_on_batch`, a
  reference step, and again (each of ours follows one of the reference's);
- blocks again, the contenders in reverse order (machine drift shows as the
  difference between the two block runs).

It prints the median and fastest step per contender and protocol. With
`--trace` it also records both programs' compiled steps with `jax.profiler`,
in blocks and interleaved, and prints the time of each program's executed
instructions by model region (`hlo_bytes.region_times`' table, events told
apart by their `hlo_module`): a region that slows when interleaved (cache
misses, memory) shows there.

    PYTHONPATH=$PWD /work/refenv/bin/python benchmarks/investigations/interleave_check.py \\
        --reference /work/refsrc/young-geng+m3ae_public --size tiny --steps 16 --trace
"""

import argparse
import collections
import glob
import os
import statistics
import sys
import tempfile
import time

os.environ["KERAS_BACKEND"] = "jax"  # both programs are JAX, whatever the shell says
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]


OURS, TOB, REF = "ours: compiled step", "ours: train_on_batch", "reference"


def contenders(size, batch, reference_path):
    """{name: step()} and, for tracing, {name: (compiled program, step)} of the two programs."""
    import common  # keras_m3ae before the reference compiles anything
    import jax
    import peers

    try:
        ref = peers.import_reference(reference_path)
    except peers.PeerUnavailable as e:
        sys.exit(f"interleave_check: the reference M3AE: {e}")
    data = peers.batch_arrays(batch, peers.REFERENCE_IMAGE_SIZE[size], common.MAX_TEXT_LENGTH,
                              common.VOCABULARY_SIZE)
    model = peers.ours_for_reference(size)
    jitted, ref_args, _ = peers.reference_step(ref, size, data)
    model.train_on_batch(data)  # builds the optimizer
    arrays = jax.tree.map(jax.numpy.asarray, data)
    # A copy of the state for the direct step: it donates its buffers, and
    # `train_on_batch` keeps using the model's own.
    state = [jax.tree.map(lambda a: jax.numpy.array(a, copy=True), model._get_jax_state(
        trainable_variables=True, non_trainable_variables=True, optimizer_variables=True,
        metrics_variables=True))]
    ours = jax.jit(model.train_step, donate_argnums=0).lower(state[0], (arrays, None, None)).compile()
    rargs = list(ref_args)
    reference = jitted.lower(*rargs).compile()

    def ours_step():
        _, state[0] = ours(state[0], (arrays, None, None))
        jax.block_until_ready(state[0])

    def reference_step():
        rargs[0], rargs[1], _ = reference(*rargs)
        jax.block_until_ready(rargs[0])

    steps = {OURS: ours_step, TOB: lambda: model.train_on_batch(data), REF: reference_step}
    return steps, {"ours": (ours, ours_step), "reference": (reference, reference_step)}


def timed(steps, order):
    times = collections.defaultdict(list)
    for name in order:
        start = time.perf_counter()
        steps[name]()
        times[name].append(time.perf_counter() - start)
    return times


def protocols(names, n):
    return {
        "blocks": [k for k in names for _ in range(n)],
        "interleaved": [k for _ in range(n) for k in (OURS, REF, TOB, REF)],
        "blocks, reversed": [k for k in names[::-1] for _ in range(n)],
    }


def traced_regions(programs, order):
    """From one traced run of `order`: {program: Counter(region -> seconds per step)}, and
    {program: median seconds from a step's first instruction to its last}."""
    import hlo_bytes
    import jax
    from jax.profiler import ProfileData

    texts = {k: c.as_text() for k, (c, _) in programs.items()}
    modules = {text.split()[1].rstrip(","): k for k, text in texts.items()}  # "HloModule NAME, ..."
    insts = {k: {i.name: i for i, _, _ in hlo_bytes.instruction_costs(t)} for k, t in texts.items()}
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for name in order:
                programs[name][1]()
        path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
        regions = {k: collections.Counter() for k in programs}
        spans = {k: {} for k in programs}  # run -> [first instruction start, last end]
        for plane in ProfileData.from_file(path).planes:
            for line in plane.lines:
                for event in line.events:
                    stats = dict(event.stats)
                    program = modules.get(stats.get("hlo_module"))
                    inst = insts[program].get(event.name) if program else None
                    if inst is not None:
                        regions[program][hlo_bytes.region(inst)] += event.duration_ns / 1e9
                        span = spans[program].setdefault(stats.get("run_id"), [event.start_ns, 0])
                        span[0] = min(span[0], event.start_ns)
                        span[1] = max(span[1], event.start_ns + event.duration_ns)
    per_step = {k: collections.Counter({r: t / max(len(spans[k]), 1) for r, t in regions[k].items()})
                for k in programs}
    median_span = {k: statistics.median((b - a) / 1e9 for a, b in spans[k].values()) for k in programs}
    return per_step, median_span


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="path to a checkout of young-geng/m3ae_public")
    parser.add_argument("--size", default="tiny", choices=("tiny", "small", "base"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=16, help="timed steps per contender and protocol")
    parser.add_argument("--trace", action="store_true",
                        help="also trace the compiled steps and print their time by region")
    parser.add_argument("--rows", type=int, default=12, help="regions shown per program")
    args = parser.parse_args(argv)

    steps, programs = contenders(args.size, args.batch, args.reference)
    import jax

    print(f"JAX {jax.__version__}, size {args.size}, batch {args.batch}, "
          f"{args.steps} single steps per contender and protocol")
    for step in steps.values():
        for _ in range(3):
            step()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    medians = {}
    for protocol, order in protocols(list(steps), args.steps).items():
        times = timed(steps, order)
        print(protocol)
        for name in steps:
            medians[protocol, name] = statistics.median(times[name])
            print(f"  {name:22} median {medians[protocol, name] * 1e3:8.1f} ms  "
                  f"fastest {min(times[name]) * 1e3:8.1f} ms")
        print(f"  reference / ours (medians): compiled step "
              f"{medians[protocol, REF] / medians[protocol, OURS]:.2f}x, train_on_batch "
              f"{medians[protocol, REF] / medians[protocol, TOB]:.2f}x")
    import common

    print(f"machine: {common.machine_line(cpu0, wall0)}")
    if not args.trace:
        return
    names = list(programs)
    tables = {
        "blocks": traced_regions(programs, [k for k in names for _ in range(args.steps)]),
        "interleaved": traced_regions(programs, names * args.steps),
    }
    for program in names:
        (blocks, span_b), (inter, span_i) = (
            (tables[p][0][program], tables[p][1][program]) for p in ("blocks", "interleaved"))
        print(f"\n{program}: median span of a traced step (first instruction's start to the last's "
              f"end): blocks {span_b * 1e3:.1f} ms, interleaved {span_i * 1e3:.1f} ms")
        print(f"{program}: executed instructions, ms per step (both executor threads)")
        print("| region | blocks | interleaved | interleaved - blocks |\n|---|---|---|---|")
        keys = sorted(set(blocks) | set(inter), key=lambda k: -abs(inter[k] - blocks[k]))
        for key in keys[: args.rows]:
            print(f"| {key} | {blocks[key] * 1e3:.1f} | {inter[key] * 1e3:.1f} | "
                  f"{(inter[key] - blocks[key]) * 1e3:+.1f} |")
        total_b, total_i = sum(blocks.values()), sum(inter.values())
        print(f"| **total** | {total_b * 1e3:.1f} | {total_i * 1e3:.1f} | "
              f"{(total_i - total_b) * 1e3:+.1f} |")


if __name__ == "__main__":
    main()
