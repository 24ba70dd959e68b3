"""Hugging Face `transformers` ViTMAE (PyTorch) vs our MAE on the torch backend.

Same architecture (encoder width/depth/heads, decoder 512 x 8 x 16 for
small/base, MLP ratio 4), image size, patch size, batch and mask ratio 0.75;
both take an AdamW training step (forward, loss, backward, update) on the same
random batch. Steps are interleaved (ours, peer, ours, ...) so machine-load
drift hits both alike; medians are reported. `transformers` is not a project
dependency: install it for this benchmark only (`pip install transformers`,
checking that it leaves torch alone); without it the peer is skipped.

    python benchmarks/vitmae_compare.py --size base --batch 4 --steps 5
    python benchmarks/vitmae_compare.py --size small --batch 8 --steps 5 --profile
"""

import argparse
import os
import statistics
import sys
import time

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import keras  # noqa: E402
import torch  # noqa: E402


def build_peer(size, mask_ratio):
    try:
        from transformers import ViTMAEConfig
        from transformers import ViTMAEForPreTraining
    except ImportError:
        return None
    c = common.SIZES[size]
    decoder = c["decoder"]
    config = ViTMAEConfig(
        hidden_size=c["hidden_dim"],
        num_hidden_layers=c["num_layers"],
        num_attention_heads=c["num_heads"],
        intermediate_size=4 * c["hidden_dim"],
        decoder_hidden_size=decoder[0],
        decoder_num_hidden_layers=decoder[1],
        decoder_num_attention_heads=decoder[2],
        decoder_intermediate_size=4 * decoder[0],
        image_size=c["image_size"],
        patch_size=c["patch_size"],
        num_channels=3,
        mask_ratio=mask_ratio,
        norm_pix_loss=False,
        layer_norm_eps=1e-6,
    )
    model = ViTMAEForPreTraining(config)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").train()


def train_steps(ours, peer, data, fused=False):
    """One AdamW training step of each, as functions that wait for the device.

    `fused`: the peer's `torch.optim.AdamW(fused=True)` instead of its
    default (a loop over the tensors on CPU).
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def our_step():
        ours.train_on_batch(data)
        sync()

    if peer is None:
        return our_step, None
    optimizer = torch.optim.AdamW(peer.parameters(), lr=1e-4, fused=fused or None)
    # HF takes channels-first pixels.
    pixels = torch.tensor(data["images"]).permute(0, 3, 1, 2).contiguous().to(device)

    def peer_step():
        peer(pixel_values=pixels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()

    return our_step, peer_step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base", choices=sorted(common.SIZES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler tables of one step of each")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ours = common.build(args.size, text=False, image_mask_ratio=args.mask_ratio)
    ours.compile(optimizer=keras.optimizers.AdamW(1e-4))
    data = common.batch(ours, args.batch)
    peer = build_peer(args.size, args.mask_ratio)
    our_step, peer_step = train_steps(ours, peer, data)
    steps = {"keras-m3ae (torch)": our_step}
    if peer is None:
        print("transformers is not installed: skipping the ViTMAE peer "
              "(pip install transformers, keeping the installed torch).")
    else:
        steps["transformers ViTMAE"] = peer_step
        print(f"params: ours {ours.count_params() / 1e6:.2f} M, "
              f"ViTMAE {sum(p.numel() for p in peer.parameters()) / 1e6:.2f} M")

    for fn in steps.values():
        for _ in range(args.warmup):
            fn()
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    print(f"size {args.size}, batch {args.batch}, mask ratio {args.mask_ratio}, "
          f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name:22} step {median:.3f} s (min {min(times[name]):.3f})  "
              f"{args.batch / median:.2f} examples/s")
    if len(medians) == 2:
        ratio = medians["transformers ViTMAE"] / medians["keras-m3ae (torch)"]
        print(f"speed ratio ours/peer (peer step time / our step time): {ratio:.2f}x")

    if args.profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile

        for name, fn in steps.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            print(f"\n== {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
