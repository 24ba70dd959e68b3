"""How fast is our training step, against what: one answer per Keras backend.

    python benchmarks/compare.py --size tiny
    python benchmarks/compare.py --size small --backend jax torch --reference PATH
    python benchmarks/compare.py --size base --tune-cpu-host

For each backend (each in its own subprocess: Keras fixes its backend at
import), one process times our training step (`train_on_batch`: forward,
loss, backward, AdamW update) next to each peer that is installed:

- our M3AE against the reference Flax M3AE (JAX), built from the checkout
  given with `--reference` (a clone of young-geng/m3ae_public; needs flax,
  optax and ml_collections), with the reference's sizes (256 px at
  small/base), loss weights, optax AdamW and tanh GELU (`peers.py`);
- our MAE against transformers' `ViTMAEForPreTraining` (PyTorch,
  `torch.optim.AdamW`; needs transformers), same sizes (224 px at
  small/base), norm-pix loss on both.

A peer that is not installed (or, for the reference, not given) is one line
saying so; our steps are timed anyway. Peers run in every backend's process,
so "jax" compares our JAX step with both peers, "tensorflow" our TensorFlow
step, and so on.

Timing (`common.time_blocks`): after warm-up steps, blocks of
`--block-steps` steps of one contender alternate between all contenders,
and the order flips every round, so a shared machine's load drift hits all
alike. For each pair it prints the fastest and the median block (seconds per
step) and the ratio peer time / our time of each (> 1: ours is faster),
then how much of the machine the process had. On a shared machine, pass
`--threads 1`: with several threads, torch's OpenMP barriers wait for
descheduled threads and steps swing 2-10x.

`--tune-cpu-host` calls `keras_m3ae.tune_cpu_host()` in each backend's
process before anything compiles (process-wide CPU settings; see its
docstring) and prints what it did; without it the library's defaults apply.
"""

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import per_backend  # noqa: E402  (imports no Keras)

BACKENDS = ("jax", "tensorflow", "torch")
SIZES = ("tiny", "small", "base")
# Blocks per contender and steps per block, by size: a tiny run stays short.
TIMING = {"tiny": (6, 4), "small": (4, 2), "base": (3, 2)}
OURS_M3AE, OURS_MAE = "ours M3AE", "ours MAE"
REFERENCE, VITMAE = "reference Flax M3AE", "transformers ViTMAE"
VITMAE_FUSED = "transformers ViTMAE, fused AdamW"
# Which of our models each peer is compared with.
PAIRS = {REFERENCE: OURS_M3AE, VITMAE: OURS_MAE, VITMAE_FUSED: OURS_MAE}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Example: python benchmarks/compare.py --size tiny",
    )
    parser.add_argument("--size", default="tiny", choices=SIZES,
                        help="tiny: the demo's 128 x 4 ViT at 64 px; small: ViT-S/16; base: "
                             "ViT-B/16 (decoder 512 x 8) (default: tiny)")
    parser.add_argument("--backend", nargs="+", default=list(BACKENDS), choices=BACKENDS,
                        metavar="BACKEND", help="one or more of jax, tensorflow, torch "
                                                "(default: all three, each in its own process)")
    parser.add_argument("--reference", metavar="PATH",
                        help="a checkout of young-geng/m3ae_public: adds the reference Flax M3AE")
    parser.add_argument("--tune-cpu-host", action="store_true",
                        help="call keras_m3ae.tune_cpu_host() before anything compiles")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, help="blocks per contender (default by size: "
                        + ", ".join(f"{s} {r}" for s, (r, _) in TIMING.items()) + ")")
    parser.add_argument("--block-steps", type=int, help="steps per block (default by size: "
                        + ", ".join(f"{s} {b}" for s, (_, b) in TIMING.items()) + ")")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per contender")
    parser.add_argument("--threads", type=int,
                        help="torch and TensorFlow compute threads (default: their own)")
    parser.add_argument("--peer-fused-adamw", action="store_true",
                        help="also time ViTMAE with torch.optim.AdamW(fused=True)")
    parser.add_argument("--exact-gelu", action="store_true",
                        help="our M3AE uses the erf GELU of our recipe instead of the "
                             "reference's tanh approximation")
    parser.add_argument("--dtype", help="our dtype policy, e.g. mixed_bfloat16 "
                                        "(the peers run in float32)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rounds, block_steps = TIMING[args.size]
    args.rounds = rounds if args.rounds is None else args.rounds
    args.block_steps = block_steps if args.block_steps is None else args.block_steps
    for name in ("batch", "rounds", "block_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


# --- The worker: one backend, one process ---


def tune(enabled):
    """Calls `keras_m3ae.tune_cpu_host()` when asked; a line saying what happened."""
    import keras_m3ae

    if not enabled:
        return "off (the library's defaults; --tune-cpu-host to call keras_m3ae.tune_cpu_host())"
    if not hasattr(keras_m3ae, "tune_cpu_host"):
        raise SystemExit("compare.py: this keras_m3ae has no tune_cpu_host()")
    return f"on: {keras_m3ae.tune_cpu_host(verbose=False)}"


def versions():
    import keras

    backend = keras.backend.backend()
    module = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}[backend]
    return f"keras {keras.__version__}, {module} {__import__(module).__version__}"


def contenders(args):
    """`({name: step()}, {peer: why it is missing}, {name: description})`."""
    import common
    import peers

    steps, missing, about = {}, {}, {}

    def our_step(model, data):
        return lambda: model.train_on_batch(data)  # returns Python floats: synchronous

    m3ae = peers.ours_for_reference(args.size, args.dtype, args.exact_gelu)
    text_data = peers.batch_arrays(args.batch, peers.REFERENCE_IMAGE_SIZE[args.size],
                                   common.MAX_TEXT_LENGTH, common.VOCABULARY_SIZE)
    steps[OURS_M3AE] = our_step(m3ae, text_data)
    about[OURS_M3AE] = (f"{m3ae.count_params() / 1e6:.1f} M params, "
                        f"{peers.REFERENCE_IMAGE_SIZE[args.size]} px, "
                        f"{common.MAX_TEXT_LENGTH} tokens, "
                        f"{'erf' if args.exact_gelu else 'tanh'} GELU")
    try:
        ref = peers.import_reference(args.reference)
        jitted, ref_args, _ = peers.reference_step(ref, args.size, text_data)
        steps[REFERENCE] = peers.reference_callable(jitted, ref_args)
    except peers.PeerUnavailable as e:
        missing[REFERENCE] = str(e)

    mae = peers.ours_for_vitmae(args.size, dtype=args.dtype)
    image_data = common.batch(mae, args.batch)
    steps[OURS_MAE] = our_step(mae, image_data)
    about[OURS_MAE] = (f"{mae.count_params() / 1e6:.1f} M params, "
                       f"{mae.backbone.image_size} px, norm-pix loss")
    try:
        peer = peers.build_vitmae(args.size)
        steps[VITMAE] = peers.vitmae_callable(peer, image_data["images"])
        if args.peer_fused_adamw:
            fused = peers.build_vitmae(args.size)
            fused.load_state_dict(peer.state_dict())
            steps[VITMAE_FUSED] = peers.vitmae_callable(fused, image_data["images"], fused=True)
    except peers.PeerUnavailable as e:
        missing[VITMAE] = str(e)
    return steps, missing, about


def worker(args):
    tuning = tune(args.tune_cpu_host)  # before anything compiles
    import common
    import keras

    if args.threads:
        common.set_threads(args.threads)
        import torch  # the ViTMAE peer's threads too

        torch.set_num_threads(args.threads)
    steps, missing, about = contenders(args)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    times = common.time_blocks(steps, args.rounds, args.block_steps, args.warmup)
    result = {
        "backend": keras.backend.backend(),
        "device": common.device_kind(),
        "versions": versions(),
        "tuning": tuning,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "times": times,
        "missing": missing,
        "about": about,
        "machine": common.machine_line(cpu0, wall0),
    }
    print("RESULT " + json.dumps(result), flush=True)


# --- The report ---


def report(result, args):
    """The lines printed for one backend's result."""
    lines = [
        f"== {result['backend']} ({result['versions']}, {result['device']}), size {args.size}, "
        f"batch {args.batch}, {args.rounds} blocks of {args.block_steps} steps per contender",
        f"   CPU host tuning: {result['tuning']}",
    ]
    if result.get("xla_flags"):
        lines.append(f"   XLA_FLAGS: {result['xla_flags']}")
    times = result["times"]
    for ours in (OURS_M3AE, OURS_MAE):
        if ours not in times:
            continue
        t = times[ours]
        lines.append(f"   {ours:34} fastest {min(t):8.4f} s  median {statistics.median(t):8.4f} s"
                     f"  ({result['about'].get(ours, '')})")
        for peer, mine in PAIRS.items():
            if mine != ours:
                continue
            if peer in times:
                p = times[peer]
                fastest, median = ratios(p, t)
                lines.append(f"   {peer:34} fastest {min(p):8.4f} s  median "
                             f"{statistics.median(p):8.4f} s  peer / ours: fastest "
                             f"{fastest:.2f}x, median {median:.2f}x")
            elif peer in result["missing"]:
                lines.append(f"   {peer:34} {result['missing'][peer]}")
    lines.append(f"   machine: {result['machine']}")
    return lines


def ratios(peer_times, our_times):
    return (min(peer_times) / min(our_times),
            statistics.median(peer_times) / statistics.median(our_times))


def summary(results):
    """One markdown table of every backend's ratios (or our times where no peer ran)."""
    lines = ["| backend | ours | fastest / median | peer | fastest / median | "
             "peer / ours: fastest / median |", "|---|---|---|---|---|---|"]
    for result in results:
        times = result["times"]
        for peer, ours in PAIRS.items():
            if ours not in times or (peer not in times and peer not in result["missing"]):
                continue
            t = times[ours]
            cells = [result["backend"], ours, f"{min(t):.4f} / {statistics.median(t):.4f} s"]
            if peer in times:
                p = times[peer]
                fastest, median = ratios(p, t)
                cells += [peer, f"{min(p):.4f} / {statistics.median(p):.4f} s",
                          f"**{fastest:.2f}x / {median:.2f}x**"]
            else:
                cells += [peer, "not installed" if "not installed" in result["missing"][peer]
                          else "not given", "-"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    print(f"compare.py: our training step against the peers, size {args.size}; ratios are "
          "peer time / our time (> 1: ours is faster)", flush=True)
    results, failed = [], []
    for backend in args.backend:
        print(f"-- {backend}: building and timing (one process)...", flush=True)
        found = per_backend.run(os.path.join(HERE, "compare.py"), [backend], argv)[backend]
        if not found:
            failed.append(backend)
            continue
        results.extend(found)
        print("\n".join(report(found[-1], args)), flush=True)
    if results:
        print("\n" + "\n".join(summary(results)))
    if failed:
        print(f"compare.py: no result from {', '.join(failed)} (its error is above)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
