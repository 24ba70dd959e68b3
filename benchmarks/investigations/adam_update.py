"""The torch Adam update alone: our fused and loop paths, Keras's own, torch.optim.AdamW.

Times one AdamW update of an MAE pretrainer's trainable variables (the
shapes of `common.build(size, text=False)`) on the torch backend, with
random gradients, four ways, in alternating blocks in one process:

- `ours fused`: the update `M3AEPretrainer.compile` installs
  (`keras_m3ae.optimizers.torch_adam`), PyTorch's fused Adam kernel;
- `ours loop`: the same update one variable at a time in in-place ops (what
  devices without the fused kernel run, and what CPU ran before);
- `keras`: Keras's own torch AdamW (`--keras`; slow at ViT-B);
- `torch.optim.AdamW` with its default (a loop on CPU) and with `fused=True`,
  on tensors of the same shapes: the update ViTMAE's benchmark takes.

Keras's columns go through `optimizer.apply` (weight decay with its
exclusions, the learning rate, the step count); torch's through `step()`.

    python benchmarks/investigations/adam_update.py --size tiny --threads 1
    python benchmarks/investigations/adam_update.py --size base --threads 1 --rounds 4
"""

import argparse
import collections
import os
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

from keras_m3ae.optimizers import torch_adam  # noqa: E402


def keras_update(model, path):
    """One `optimizer.apply` of a compiled copy's AdamW.

    `path`: "keras" (Keras's own step: the library's `AdamW(fast_update=False)`),
    "fused" (the library's step through PyTorch's fused kernel) or "loop" (its
    in-place loop, the fallback for devices without the kernel).
    """
    model.compile(optimizer=keras_m3ae.optimizers.AdamW(1e-4, fast_update=path != "keras"))
    optimizer, variables = model.optimizer, model.trainable_variables
    optimizer.build(variables)
    grads = [torch.randn_like(v.value) * 1e-3 for v in variables]
    devices = torch_adam.FUSED_DEVICES if path == "fused" else ()

    def run():
        torch_adam.FUSED_DEVICES = devices
        with torch.no_grad():
            optimizer.apply(grads, variables)

    return run, len(variables), sum(v.numel() for v in grads)


def torch_update(model, **kwargs):
    params = [torch.nn.Parameter(torch.randn_like(v.value)) for v in model.trainable_variables]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = torch.optim.AdamW(params, lr=1e-4, **kwargs)
    return optimizer.step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base", choices=sorted(common.SIZES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--block-steps", type=int, default=5)
    parser.add_argument("--keras", action="store_true", help="also Keras's own torch AdamW")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = common.build(args.size, text=False)
    contenders = {}
    contenders["ours fused"], tensors, numel = keras_update(model, "fused")
    contenders["ours loop"], _, _ = keras_update(common.build(args.size, text=False), "loop")
    if args.keras:
        contenders["keras"], _, _ = keras_update(common.build(args.size, text=False), "keras")
    contenders["torch.optim.AdamW"] = torch_update(model)
    contenders["torch.optim.AdamW fused"] = torch_update(model, fused=True)
    print(f"torch {torch.__version__}, {args.threads} thread(s), MAE {args.size}: "
          f"{tensors} tensors, {numel / 1e6:.1f} M values")
    for run in contenders.values():
        run()
        run()
    times = collections.defaultdict(list)
    names = list(contenders)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            for _ in range(args.block_steps):
                contenders[name]()
            times[name].append((time.perf_counter() - start) / args.block_steps)
    base = statistics.median(times["ours fused"])
    for name, t in times.items():
        print(f"  {name:26} fastest {min(t) * 1e3:8.2f} ms  median {statistics.median(t) * 1e3:8.2f} ms"
              f"  ({statistics.median(t) / base:.2f}x ours fused)")


if __name__ == "__main__":
    main()
