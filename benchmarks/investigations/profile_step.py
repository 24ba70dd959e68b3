"""Where a torch-backend training step goes: ours vs Hugging Face ViTMAE.

Splits one AdamW training step of our MAE (Keras torch backend) and of
`transformers`' `ViTMAEForPreTraining` (same dimensions, batch, mask ratio)
into forward (+ loss), backward and optimizer update, timed separately and
interleaved (ours, peer, ours, ...), then profiles one step of each with
`torch.profiler` (CPU) and prints, per phase, the wall time, the time spent in
aten kernels and the top ops. `train_on_batch` is timed too: its excess over
the sum of the phases is the Keras trainer's own per-call cost.

    python benchmarks/investigations/profile_step.py --size base --batch 2 --steps 5
    python benchmarks/investigations/profile_step.py --size base --batch 2 --jit   # + torch.compile
"""

import argparse
import collections
import os
import resource
import statistics
import sys
import time

os.environ["KERAS_BACKEND"] = "torch"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # this folder and benchmarks/ (common, peers)

import common  # noqa: E402
import keras  # noqa: E402
import keras_m3ae  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity  # noqa: E402
from torch.profiler import profile  # noqa: E402
from torch.profiler import record_function  # noqa: E402
from peers import build_vitmae  # noqa: E402

PHASES = ("forward", "backward", "optimizer")


def our_phases(model, data):
    """Ours, as `TorchTrainer.train_step` does it, one callable per phase."""
    x = {k: torch.as_tensor(v) for k, v in data.items()}
    state = {}

    def forward():
        model.zero_grad()
        y_pred = model(x, training=True)
        state["loss"] = model._compute_loss(x=x, y_pred=y_pred, training=True)

    def backward():
        state["loss"].backward()

    def optimizer():
        weights = model.trainable_weights[:]
        with torch.no_grad():
            model.optimizer.apply([v.value.grad for v in weights], weights)

    return {"forward": forward, "backward": backward, "optimizer": optimizer}


def peer_phases(peer, data):
    pixels = torch.tensor(data["images"]).permute(0, 3, 1, 2).contiguous()
    opt = torch.optim.AdamW(peer.parameters(), lr=1e-4)  # on CPU: a loop over the tensors
    state = {}

    def forward():
        opt.zero_grad(set_to_none=True)
        state["loss"] = peer(pixel_values=pixels).loss

    def backward():
        state["loss"].backward()

    def optimizer():
        opt.step()

    return {"forward": forward, "backward": backward, "optimizer": optimizer}


def run_step(phases, times=None, faults=None):
    for name in PHASES:
        minflt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        with record_function("phase::" + name):
            phases[name]()
        if times is not None:
            times[name].append(time.perf_counter() - start)
        if faults is not None:
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - minflt)


def op_summary(prof, top):
    """Per phase: wall ms, summed self-CPU ms of aten ops, top ops by self time."""
    events = prof.events()
    spans = {e.name[7:]: (e.time_range.start, e.time_range.end)
             for e in events if e.name.startswith("phase::")}
    out = {}
    for phase, (lo, hi) in spans.items():
        by_op = collections.defaultdict(lambda: [0.0, 0])
        for e in events:
            if e.name.startswith("aten::") and lo <= e.time_range.start < hi:
                by_op[e.name][0] += e.self_cpu_time_total / 1e3
                by_op[e.name][1] += 1
        aten = sum(v[0] for v in by_op.values())
        calls = sum(v[1] for v in by_op.values())
        ranked = sorted(by_op.items(), key=lambda kv: -kv[1][0])[:top]
        out[phase] = dict(wall=(hi - lo) / 1e3, aten=aten, calls=calls, top=ranked)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base", choices=sorted(common.SIZES))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads for both (0: torch's default)")
    parser.add_argument("--stock-adam", action="store_true",
                        help="also run ours with Keras's own torch Adam update (before the fix)")
    parser.add_argument("--jit", action="store_true",
                        help="also time train_on_batch with jit_compile=True (torch.compile)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ours = common.build(args.size, text=False, image_mask_ratio=args.mask_ratio)
    ours.compile(optimizer=keras_m3ae.optimizers.AdamW(1e-4), jit_compile=False)
    data = common.batch(ours, args.batch)
    peer = build_vitmae(args.size, args.mask_ratio, norm_pix_loss=False)
    steps = {"ours": our_phases(ours, data), "peer": peer_phases(peer, data)}
    if args.stock_adam:
        stock = common.build(args.size, text=False, image_mask_ratio=args.mask_ratio)
        # Keras's own AdamW step: the library's AdamW without its fast step.
        stock.compile(optimizer=keras_m3ae.optimizers.AdamW(1e-4, fast_update=False),
                      jit_compile=False)
        steps["stock"] = our_phases(stock, data)
    print(f"size {args.size}, batch {args.batch}, mask {args.mask_ratio}, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}, "
          f"params ours {ours.count_params() / 1e6:.2f} M, "
          f"peer {sum(p.numel() for p in peer.parameters()) / 1e6:.2f} M")

    for _ in range(args.warmup):
        for phases in steps.values():
            run_step(phases)
        ours.train_on_batch(data)
    times = {who: {p: [] for p in PHASES} for who in steps}
    faults = {who: {p: [] for p in PHASES} for who in steps}
    tob = []
    for _ in range(args.steps):
        for who, phases in steps.items():
            run_step(phases, times[who], faults[who])
        start = time.perf_counter()
        ours.train_on_batch(data)
        tob.append(time.perf_counter() - start)

    print("\nmedian seconds per phase (interleaved)")
    print(f"{'':6} " + " ".join(f"{p:>10}" for p in PHASES) + f" {'sum':>8}")
    totals = {}
    for who in steps:
        med = {p: statistics.median(times[who][p]) for p in PHASES}
        totals[who] = statistics.median(
            [sum(times[who][p][i] for p in PHASES) for i in range(args.steps)]
        )
        print(f"{who:6} " + " ".join(f"{med[p]:10.3f}" for p in PHASES) + f" {totals[who]:8.3f}")
    print("median minor page faults per phase (thousands; 4 KiB pages of fresh memory)")
    for who in steps:
        print(f"{who:6} " + " ".join(
            f"{statistics.median(faults[who][p]) / 1e3:10.1f}" for p in PHASES))
    print(f"ours train_on_batch median {statistics.median(tob):.3f} s "
          f"(min {min(tob):.3f}); sum of our phases {totals['ours']:.3f} s")
    if "stock" in totals:
        print(f"step ratio peer/stock (Keras's Adam update): {totals['peer'] / totals['stock']:.2f}x")
    print(f"step ratio peer/ours (phases): {totals['peer'] / totals['ours']:.2f}x; "
          f"peer/ours train_on_batch: {totals['peer'] / statistics.median(tob):.2f}x")

    for who, phases in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run_step(phases)
        print(f"\n== profile: {who}")
        for phase, s in op_summary(prof, args.top).items():
            print(f"-- {phase}: wall {s['wall']:.1f} ms, aten self CPU {s['aten']:.1f} ms, "
                  f"{s['calls']} aten calls")
            for name, (ms, n) in s["top"]:
                print(f"   {name:45} {ms:9.1f} ms {n:6d} calls")

    if args.jit:
        ours.compile(optimizer=keras_m3ae.optimizers.AdamW(1e-4), jit_compile=True)
        start = time.perf_counter()
        ours.train_on_batch(data)
        print(f"\njit_compile=True: first call (compile) {time.perf_counter() - start:.1f} s")
        median, best, _ = common.time_calls(lambda: ours.train_on_batch(data), args.steps, 1)
        print(f"jit_compile=True train_on_batch median {median:.3f} s (min {best:.3f})")


if __name__ == "__main__":
    main()
