"""Our JAX train step next to the reference Flax M3AE, analysed: XLA costs, bytes, profiles.

`benchmarks/compare.py` answers "how fast" (whole steps, every backend, every
peer). This script is the investigation tool behind the JAX figures: it
builds the same two programs (`peers.py`: the reference repository's own
Flax model and losses from the checkout given with `--reference`, its optax
AdamW; our M3AE with the same sizes, loss weights and AdamW, the reference's
tanh GELU unless `--exact-gelu`), times their whole steps in alternating
blocks like `compare.py`, and can also:

- `--grad`: time the two jitted forward + backward passes alone the same
  way (the difference to the whole steps is the optimizer update and the
  trainer);
- `--analyze`: print XLA's cost and memory analysis of each whole jitted
  train step (FLOPs, bytes accessed; argument, output, aliased and
  temporary bytes, MB of `copy` ops), of our forward + backward and of each
  optimizer update alone (`--analyze grad`: the two forward + backward
  passes only); `--dump-hlo DIR` writes each analysed program's optimized
  HLO for `hlo_bytes.py`, which splits the bytes by model region;
- `--profile CALLS`: trace both forward + backward passes with
  `jax.profiler` and split their time by model region the same way.

    PYTHONPATH=$PWD /work/refenv/bin/python benchmarks/investigations/reference_compare.py \\
        --reference /tmp/refsrc/m3ae_public --size small --analyze

flax, optax and ml_collections are benchmark dependencies only (a separate
venv); without them the script stops with a one-line message.
"""

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # this folder and benchmarks/ (common, peers)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="path to a checkout of young-geng/m3ae_public")
    parser.add_argument("--size", default="small", choices=("tiny", "small", "base"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6,
                        help="blocks per contender (0: no timing, e.g. with --profile)")
    parser.add_argument("--block-steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", default=None,
                        help="our dtype policy, e.g. mixed_bfloat16 (the reference is float32 only)")
    parser.add_argument("--exact-gelu", action="store_true",
                        help="our MLPs use the exact (erf) GELU of our recipe instead of the "
                             "reference's tanh approximation")
    parser.add_argument("--analyze", nargs="?", const="all", choices=("all", "grad"),
                        help="print XLA cost and memory analysis of the JAX steps "
                             "(`grad`: of the two forward + backward passes only)")
    parser.add_argument("--analyze-only", action="store_true",
                        help="with --analyze: stop after the analysis (no timing)")
    parser.add_argument("--profile", type=int, default=0, metavar="CALLS",
                        help="trace CALLS calls of each forward + backward pass with "
                             "jax.profiler and print their time by model region")
    parser.add_argument("--dump-hlo", metavar="DIR",
                        help="with --analyze: write each analysed step's optimized HLO to "
                             "DIR/<name>.hlo.txt (read them with benchmarks/investigations/hlo_bytes.py)")
    parser.add_argument("--grad", action="store_true",
                        help="after the steps, time the two jitted forward + backward "
                             "passes alone the same way (what the rest of each step costs)")
    return parser.parse_args(argv)


def fail(message):
    print(f"reference_compare: {message}", file=sys.stderr)
    sys.exit(2)


# --- Timing ---


def compare(contenders, args, title):
    """Times `{ours, peer[, other peers]}` in alternating blocks and prints the figures."""
    if not args.rounds:
        return
    import common

    cpu0, wall0 = time.process_time(), time.perf_counter()
    times = common.time_blocks(contenders, args.rounds, args.block_steps, args.warmup)
    print(f" {title}blocks of {args.block_steps} steps, {args.rounds} per contender, order flipping:")
    names = list(contenders)
    for name, t in times.items():
        print(f"  {name:28} fastest {min(t):.3f} s  median {statistics.median(t):.3f} s  "
              f"{args.batch / statistics.median(t):7.2f} img/s")
    for peer in names[1:]:
        fastest, median = (min(times[peer]) / min(times[names[0]]),
                           statistics.median(times[peer]) / statistics.median(times[names[0]]))
        print(f"  ratio {peer} / ours (time): fastest {fastest:.2f}x  median {median:.2f}x")
    print(f"  machine: {common.machine_line(cpu0, wall0)}")


def cost(compiled):
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return analysis.get("flops", float("nan")), analysis.get("bytes accessed", float("nan"))


def memory(compiled):
    """MB of arguments, outputs, donated (aliased) outputs and temporaries; peak estimate."""
    m = compiled.memory_analysis()
    arg, out, alias, temp = (m.argument_size_in_bytes, m.output_size_in_bytes,
                             m.alias_size_in_bytes, m.temp_size_in_bytes)
    return dict(args=arg / 2**20, outputs=out / 2**20, aliased=alias / 2**20,
                temp=temp / 2**20, peak=(arg + out - alias + temp) / 2**20)


_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1}


def copied_mb(compiled):
    """MB written by top-level `copy` ops of the optimized HLO.

    XLA inserts such copies where a donated buffer cannot be updated in
    place (its old value is still read after the new one is written): each
    is a full extra read and write of a state array.
    """
    import math
    import re

    text = compiled.as_text()
    entry = text[text.index("\nENTRY"):]
    total = 0
    for dtype, dims in re.findall(r"= (\w+)\[([\d,]*)\]\{[^}]*\} copy\(", entry):
        size = math.prod(int(d) for d in dims.split(",")) if dims else 1
        total += size * _BYTES.get(dtype, 4)
    return total / 2**20


def print_analysis(name, compiled, dump_dir=None):
    if dump_dir:
        os.makedirs(dump_dir, exist_ok=True)
        path = os.path.join(dump_dir, name.replace(":", "").replace(" + ", "_").replace(" ", "_"))
        with open(path + ".hlo.txt", "w") as f:
            f.write(compiled.as_text())
    flops, accessed = cost(compiled)
    mem = memory(compiled)
    print(f"  {name:34} {flops / 1e9:8.1f} GFLOP {accessed / 1e9:7.2f} GB accessed | "
          f"MB args {mem['args']:.0f} out {mem['outputs']:.0f} aliased {mem['aliased']:.0f} "
          f"temp {mem['temp']:.0f} -> peak {mem['peak']:.0f} | copies {copied_mb(compiled):.0f} MB")


def our_grad_fn(model):
    """Our forward + backward alone: jitted `value_and_grad` of the loss over the variables."""
    import jax

    def loss_fn(trainable, non_trainable, x):
        y, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        return model.compute_losses(x, y)["loss"]

    return jax.jit(jax.value_and_grad(loss_fn))


def analyze_ours(model, data, parts="all", dump_dir=None):
    """Whole Keras train step, forward + backward alone, optimizer update alone."""
    import jax

    state = model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                 optimizer_variables=True, metrics_variables=True)
    arrays = jax.tree.map(jax.numpy.asarray, data)
    if parts == "all":
        step = jax.jit(model.train_step, donate_argnums=0)
        print_analysis("ours: whole train step",
                       step.lower(state, (arrays, None, None)).compile(), dump_dir)
    trainable, non_trainable = state[0], state[1]
    grad_fn = our_grad_fn(model)
    print_analysis("ours: forward + backward",
                   grad_fn.lower(trainable, non_trainable, arrays).compile(), dump_dir)
    if parts != "all":
        return
    # Donated inputs in the order of the outputs: JAX pairs donated buffers
    # with outputs by shape in order, and a mismatched pairing costs copies.
    update = jax.jit(lambda t, o, g: model.optimizer.stateless_apply(o, g, t), donate_argnums=(0, 1))
    print_analysis("ours: optimizer update alone",
                   update.lower(trainable, state[2], trainable).compile(), dump_dir)


def analyze_reference(jitted, args, grad_fn, parts="all", dump_dir=None):
    import jax

    if parts == "all":
        print_analysis("reference: whole train step", jitted.lower(*args).compile(), dump_dir)
    state = args[0]
    print_analysis("reference: forward + backward",
                   grad_fn.lower(state.params, *args[1:]).compile(), dump_dir)
    if parts != "all":
        return
    update = jax.jit(lambda s, g: s.apply_gradients(grads=g), donate_argnums=(0,))
    print_analysis("reference: optimizer update alone",
                   update.lower(state, state.params).compile(), dump_dir)


def profile_regions(model, data, ref_grad_fn, ref_args, calls):
    """Both forward + backward passes traced; their thunk time by model region."""
    import glob
    import tempfile

    import hlo_bytes
    import jax

    model.train_on_batch(data)  # builds everything
    copy = lambda tree: jax.tree.map(jax.numpy.array, tree)  # noqa: E731
    trainable = copy([v.value for v in model.trainable_variables])
    non_trainable = copy([v.value for v in model.non_trainable_variables])
    arrays = jax.tree.map(jax.numpy.asarray, data)
    programs = {
        "ours": (our_grad_fn(model), (trainable, non_trainable, arrays)),
        "reference": (ref_grad_fn, (copy(ref_args[0].params), *ref_args[1:])),
    }
    tables = {}
    for name, (fn, fn_args) in programs.items():
        compiled = fn.lower(*fn_args).compile()
        for _ in range(2):
            jax.block_until_ready(compiled(*fn_args))
        with tempfile.TemporaryDirectory() as trace_dir:
            start = time.perf_counter()
            with jax.profiler.trace(trace_dir):
                for _ in range(calls):
                    jax.block_until_ready(compiled(*fn_args))
            wall = (time.perf_counter() - start) / calls
            path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
            tables[name], threads = hlo_bytes.region_times(compiled.as_text(), path, calls)
        busy = " + ".join(f"{t:.2f}" for t in sorted(threads.values(), reverse=True) if t > 0.0005)
        print(f"  {name} forward + backward, {calls} traced calls: {wall:.3f} s per call "
              f"(with tracing), instructions {sum(tables[name].values()):.3f} s on the "
              f"executor threads ({busy} s)")
    ours, ref = tables["ours"], tables["reference"]
    print("  | region | ours ms | reference ms | ours - reference ms |\n  |---|---|---|---|")
    for key in sorted(set(ours) | set(ref), key=lambda k: -abs(ours[k] - ref[k]))[:25]:
        print(f"  | {key} | {ours[key] * 1e3:.1f} | {ref[key] * 1e3:.1f} | "
              f"{(ours[key] - ref[key]) * 1e3:+.1f} |")
    print(f"  | **total** | {sum(ours.values()) * 1e3:.0f} | {sum(ref.values()) * 1e3:.0f} | "
          f"{(sum(ours.values()) - sum(ref.values())) * 1e3:+.0f} |")


def run_jax(args):
    # keras_m3ae (through common) before the reference: whatever it sets up
    # must be in place before the first compilation, which importing the
    # reference can do.
    import common
    import jax
    import peers

    try:
        ref = peers.import_reference(args.reference)
    except peers.PeerUnavailable as e:
        fail(f"the reference M3AE: {e}")
    data = peers.batch_arrays(args.batch, peers.REFERENCE_IMAGE_SIZE[args.size],
                              common.MAX_TEXT_LENGTH, common.VOCABULARY_SIZE)
    model = peers.ours_for_reference(args.size, args.dtype, args.exact_gelu)
    jitted, ref_args, ref_grad_fn = peers.reference_step(ref, args.size, data)
    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}, size {args.size}, "
          f"{peers.REFERENCE_IMAGE_SIZE[args.size]} px, batch {args.batch}, "
          f"dtype {args.dtype or 'float32'}, "
          f"our GELU {'erf' if args.exact_gelu else 'tanh (as the reference)'}: "
          f"params ours {model.count_params() / 1e6:.2f} M, reference "
          f"{sum(x.size for x in jax.tree.leaves(ref_args[0].params)) / 1e6:.2f} M; "
          f"XLA_FLAGS {os.environ.get('XLA_FLAGS', '')!r}")
    if args.analyze:
        model.train_on_batch(data)  # builds the optimizer
        analyze_ours(model, data, args.analyze, args.dump_hlo)
        analyze_reference(jitted, ref_args, ref_grad_fn, args.analyze, args.dump_hlo)
        if args.analyze_only:
            return
    if args.profile:
        profile_regions(model, data, ref_grad_fn, ref_args, args.profile)

    ref_state = list(ref_args)

    def ref_step():
        state, rng, loss = jitted(*ref_state)
        ref_state[0], ref_state[1] = state, rng
        loss.block_until_ready()

    def our_step():
        model.train_on_batch(data)  # returns Python floats: synchronous

    compare({"ours (train_on_batch)": our_step, "reference Flax M3AE": ref_step}, args, "")
    if args.grad:
        copy = lambda tree: jax.tree.map(jax.numpy.array, tree)  # noqa: E731
        trainable = copy([v.value for v in model.trainable_variables])
        non_trainable = copy([v.value for v in model.non_trainable_variables])
        arrays = jax.tree.map(jax.numpy.asarray, data)
        ours_grad = our_grad_fn(model).lower(trainable, non_trainable, arrays).compile()
        # The reference's live state: its step donated the arrays of `ref_args`.
        ref_params, ref_rest = copy(ref_state[0].params), ref_state[1:]
        ref_grad = ref_grad_fn.lower(ref_params, *ref_rest).compile()
        compare({"ours forward + backward": lambda: jax.block_until_ready(
                     ours_grad(trainable, non_trainable, arrays)),
                 "reference forward + backward": lambda: jax.block_until_ready(
                     ref_grad(ref_params, *ref_rest))},
                args, "forward + backward alone (jitted value_and_grad), ")
    if jax.devices()[0].platform != "cpu":
        stats = jax.devices()[0].memory_stats() or {}
        print(f"  device peak memory (both models) {stats.get('peak_bytes_in_use', 0) / 2**20:.0f} MB")


def main(argv=None):
    os.environ["KERAS_BACKEND"] = "jax"  # both programs are JAX, whatever the shell says
    run_jax(parse_args(argv))


if __name__ == "__main__":
    main()
