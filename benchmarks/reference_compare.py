"""Our train step side by side with the reference Flax M3AE (JAX) and ViTMAE (torch).

JAX: our `M3AEPretrainer.train_on_batch` against a jitted train step built on
the reference repository's own Flax model and losses (`m3ae/model.py`, imported
from the checkout given with `--reference`; nothing is copied from it) with
the optax AdamW of its `m3ae_main.py` (betas 0.9/0.95, weight decay 0.05 with
its exclusions, global-norm clipping at 1e9, text loss weight 0.1; our
pretrainer gets the same weights and AdamW, and the reference's tanh GELU
unless `--exact-gelu`). Both donate their training state, as the reference's
`pmap` does and Keras's JAX trainer does.

torch: our MAE (`vocabulary_size=None`) against transformers'
`ViTMAEForPreTraining` (norm-pix loss on both), `torch.optim.AdamW`, at one
and at two threads; `--peer-fused-adamw` adds a copy of ViTMAE with
`torch.optim.AdamW(fused=True)` (our update runs the same kernel).

Timing on a shared machine: steps run in blocks of `--block-steps` steps of
one contender, blocks alternate between contenders and the order flips every
round (ours first, then the peer first), so load drift hits both alike. Per
contender it prints the fastest and the median block (per step), images/s,
and the ratio peer time / our time (> 1: ours is faster). `--block-steps 1`
interleaves single steps. The last line gives process CPU time / wall time
and the load average: how much of the machine the run had. `--grad` (JAX)
then times the two jitted forward + backward passes alone the same way, so
the difference to the whole steps shows what the optimizer update and the
trainer cost.

With `--analyze` (JAX) it also prints XLA's cost and memory analysis of each
whole jitted train step (FLOPs, bytes accessed; argument, output, aliased and
temporary bytes) and of our forward + backward and optimizer update alone;
`--analyze grad` only the two forward + backward passes, `--dump-hlo DIR`
writes each analysed program's optimized HLO for `benchmarks/hlo_bytes.py`,
which splits the bytes by model region. `--profile CALLS` traces both forward
+ backward passes with `jax.profiler` and splits their time the same way (XLA's
CPU runtime records each executed instruction).

    PYTHONPATH=$PWD /work/refenv/bin/python benchmarks/reference_compare.py \\
        --reference /work/refsrc/young-geng+m3ae_public --size small --analyze

flax, optax and ml_collections (JAX) and transformers (torch) are benchmark
dependencies only; without them that side stops with a one-line message.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# The reference M3AE trains at 256 px (patch 16: 256 patches) with 64 tokens.
IMAGE_SIZE = {"tiny": 64, "small": 256, "base": 256}
# Image / text loss weights of the reference's m3ae_main.py.
TEXT_LOSS_WEIGHT = 0.1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="path to a checkout of young-geng/m3ae_public")
    parser.add_argument("--size", default="small", choices=("tiny", "small", "base"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6,
                        help="blocks per contender (0: no timing, e.g. with --profile)")
    parser.add_argument("--block-steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--backend", default="jax,torch",
                        help="comma-separated: jax (reference M3AE), torch (ViTMAE)")
    parser.add_argument("--threads", default="1,2", help="torch thread counts to run")
    parser.add_argument("--peer-fused-adamw", action="store_true",
                        help="torch: also time ViTMAE with torch.optim.AdamW(fused=True) (its "
                             "default on CPU is a loop over the tensors)")
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
                             "DIR/<name>.hlo.txt (read them with benchmarks/hlo_bytes.py)")
    parser.add_argument("--grad", action="store_true",
                        help="JAX: after the steps, time the two jitted forward + backward "
                             "passes alone the same way (what the rest of each step costs)")
    return parser.parse_args(argv)


def fail(message):
    print(f"reference_compare: {message}", file=sys.stderr)
    sys.exit(2)


# --- Timing ---


def blocks(contenders, rounds, block_steps, warmup):
    """Per-step times of blocks of steps, contenders alternating, order flipping.

    Returns {name: [seconds per step of each block]}.
    """
    for step in contenders.values():
        for _ in range(warmup):
            step()
    names = list(contenders)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            for _ in range(block_steps):
                contenders[name]()
            times[name].append((time.perf_counter() - start) / block_steps)
    return times


def report(times, batch, ours, *peers):
    for name, t in times.items():
        print(f"  {name:28} fastest {min(t):.3f} s  median {statistics.median(t):.3f} s  "
              f"{batch / statistics.median(t):7.2f} img/s")
    for peer in peers:
        if peer in times:
            fastest = min(times[peer]) / min(times[ours])
            median = statistics.median(times[peer]) / statistics.median(times[ours])
            print(f"  ratio {peer} / ours (time): fastest {fastest:.2f}x  median {median:.2f}x")


def compare(contenders, args, title):
    """Times `{ours, peer[, other peers]}` in alternating blocks and prints the figures."""
    if not args.rounds:
        return
    cpu0, wall0 = time.process_time(), time.perf_counter()
    times = blocks(contenders, args.rounds, args.block_steps, args.warmup)
    print(f" {title}blocks of {args.block_steps} steps, {args.rounds} per contender, order flipping:")
    report(times, args.batch, *contenders)
    load_line(cpu0, wall0)


def load_line(cpu0, wall0):
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"  machine: process CPU/wall {cpu / wall:.2f} (of {os.cpu_count()} cores), "
          f"load average {load}")


def batch_arrays(batch, image_size, text_length, vocabulary_size, seed=0):
    """Random images and captions of 8 to text_length - 1 real tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, text_length, batch)
    return {
        "images": rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype("float32"),
        "token_ids": rng.integers(1, vocabulary_size, (batch, text_length)).astype("int32"),
        "padding_mask": (np.arange(text_length)[None] < lengths[:, None]).astype("int32"),
    }


# --- JAX: the reference Flax M3AE ---


def import_reference(path):
    if not path:
        fail("--reference PATH (a checkout of young-geng/m3ae_public) is needed for the JAX side")
    if not os.path.isfile(os.path.join(path, "m3ae", "model.py")):
        fail(f"{path} has no m3ae/model.py: not a checkout of young-geng/m3ae_public")
    sys.path.insert(0, os.path.abspath(path))
    try:
        import optax  # noqa: F401

        from m3ae import model
    except ImportError as e:
        fail(f"the reference needs {e.name}, which is not installed "
             "(pip install flax optax ml_collections in a separate venv)")
    return model


def reference_step(ref, size, batch):
    """The reference model, its initial train state and a jitted, donating step."""
    import common
    import flax
    import jax
    import jax.numpy as jnp
    import optax

    c = common.SIZES[size]
    width, depth, heads = c["decoder"]
    # The reference model has no dtype option: it always runs in float32.
    model = ref.MaskedMultimodalAutoencoder(
        config_updates=dict(
            emb_dim=c["hidden_dim"], depth=c["num_layers"], num_heads=c["num_heads"],
            dec_emb_dim=width, dec_depth=depth, dec_num_heads=heads, mlp_ratio=4,
        ),
        text_vocab_size=common.VOCABULARY_SIZE,
        image_output_dim=c["patch_size"] ** 2 * 3,
    )
    patch = c["patch_size"]
    rngs = {k: jax.random.PRNGKey(i) for i, k in enumerate(model.rng_keys())}
    images = jnp.asarray(batch["images"])
    text = jnp.asarray(batch["token_ids"])
    # The reference's padding mask is 1.0 on padding.
    padding = 1.0 - jnp.asarray(batch["padding_mask"], jnp.float32)
    params = model.init(rngs, ref.extract_patches(images, patch), text, padding, deterministic=False)
    params = flax.core.frozen_dict.unfreeze(params)
    no_decay = model.no_decay_list()

    def decay_mask(p):
        flat = flax.traverse_util.flatten_dict(p)
        return flax.traverse_util.unflatten_dict(
            {k: all(name not in no_decay for name in k) for k in flat}
        )

    state = ref.M3AETrainState.create(
        params=params, apply_fn=None, tokenizer_params=None,
        tx=optax.chain(
            optax.clip_by_global_norm(1e9),
            optax.adamw(1e-4, b1=0.9, b2=0.95, weight_decay=0.05, mask=decay_mask),
        ),
    )

    def loss_fn(p, rng, images, text, padding):
        keys = dict(zip(model.rng_keys(), jax.random.split(rng, len(model.rng_keys()))))
        patches = ref.extract_patches(images, patch)
        image_out, text_out, image_mask, text_mask = model.apply(
            p, patches, text, padding, deterministic=False, rngs=keys
        )
        image_loss = ref.patch_mse_loss(image_out, patches, image_mask)
        text_loss, _ = ref.cross_entropy_loss_and_accuracy(
            text_out, text, ref.mask_intersection(text_mask, ref.mask_not(padding))
        )
        return image_loss + TEXT_LOSS_WEIGHT * text_loss

    def step(state, rng, images, text, padding):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, rng, images, text, padding)
        return state.apply_gradients(grads=grads), jax.random.fold_in(rng, 1), loss

    jitted = jax.jit(step, donate_argnums=(0,))
    args = (state, jax.random.PRNGKey(0), images, text, padding)
    # Forward + backward alone, for the analysis.
    grad_fn = jax.jit(jax.value_and_grad(loss_fn))
    return jitted, args, grad_fn


def ours_jax(size, batch, dtype, exact_gelu=False):
    import common
    import keras

    import keras_m3ae

    c = dict(common.SIZES[size], image_size=IMAGE_SIZE[size])
    width, depth, heads = c.pop("decoder")
    keras.utils.set_random_seed(0)
    # The reference's MLPs use flax's default tanh GELU; ours the exact erf
    # form unless told otherwise. Same model for the comparison by default.
    backbone = keras_m3ae.M3AEBackbone(
        vocabulary_size=common.VOCABULARY_SIZE, max_text_length=common.MAX_TEXT_LENGTH,
        dtype=dtype, gelu_approximate=not exact_gelu, **c,
    )
    model = keras_m3ae.M3AEPretrainer(
        backbone, decoder_hidden_dim=width, decoder_num_layers=depth, decoder_num_heads=heads,
        text_loss_weight=TEXT_LOSS_WEIGHT, seed=0,
    )
    model.compile(optimizer=keras_m3ae.optimizers.pretrain_optimizer(1e-4, global_clipnorm=1e9))
    return model


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
    os.environ["KERAS_BACKEND"] = "jax"
    sys.path.insert(0, HERE)
    # keras_m3ae first: its XLA flag (`keras_m3ae/_xla_flags.py`) must be in
    # XLA_FLAGS before the first compilation, which importing the reference can do.
    import common
    import jax

    ref = import_reference(args.reference)

    import keras_m3ae  # noqa: F401

    data = batch_arrays(args.batch, IMAGE_SIZE[args.size], common.MAX_TEXT_LENGTH,
                        common.VOCABULARY_SIZE)
    model = ours_jax(args.size, args.batch, args.dtype, args.exact_gelu)
    jitted, ref_args, ref_grad_fn = reference_step(ref, args.size, data)
    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}, size {args.size}, "
          f"{IMAGE_SIZE[args.size]} px, batch {args.batch}, dtype {args.dtype or 'float32'}, "
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


# --- torch: transformers ViTMAE ---


def run_torch(args):
    os.environ["KERAS_BACKEND"] = "torch"
    sys.path.insert(0, HERE)
    import common
    import keras
    import torch
    import vitmae_compare

    size = args.size
    common.SIZES[size] = dict(common.SIZES[size], image_size=224 if size != "tiny" else 64)
    peer = vitmae_compare.build_peer(size, 0.75)
    if peer is None:
        fail("transformers is not installed: the ViTMAE side needs it (pip install transformers)")
    peer.config.norm_pix_loss = True
    ours = common.build(size, text=False, image_mask_ratio=0.75, dtype=args.dtype)
    ours.norm_pix_loss = True
    ours.compile(optimizer=keras.optimizers.AdamW(1e-4))
    data = common.batch(ours, args.batch)
    our_step, peer_step = vitmae_compare.train_steps(ours, peer, data)
    contenders = {"ours (train_on_batch)": our_step, "transformers ViTMAE": peer_step}
    if args.peer_fused_adamw:
        fused = vitmae_compare.build_peer(size, 0.75)
        fused.config.norm_pix_loss = True
        fused.load_state_dict(peer.state_dict())
        contenders["ViTMAE, fused AdamW"] = vitmae_compare.train_steps(
            ours, fused, data, fused=True)[1]
    print(f"torch {torch.__version__} on {common.device_kind()}, MAE size {size}, "
          f"{common.SIZES[size]['image_size']} px, batch {args.batch}, norm-pix loss")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        compare(contenders, args, f"{threads} thread(s), ")


def main(argv=None):
    args = parse_args(argv)
    backends = args.backend.split(",")
    if len(backends) > 1:
        # Keras fixes its backend at import: one process per backend.
        for backend in backends:
            argv = [a for a in (sys.argv[1:] if argv is None else argv)]
            subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--backend", backend],
                           check=False)
        return
    {"jax": run_jax, "torch": run_torch}[backends[0]](args)


if __name__ == "__main__":
    main()
