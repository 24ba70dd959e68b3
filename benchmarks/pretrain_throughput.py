"""Pretraining throughput, peak memory, masking speedup, encoder/decoder
split and model FLOPs utilisation, per Keras backend.

Each backend runs in its own subprocess (`KERAS_BACKEND` is fixed at import).
A train step is `pretrainer.train_on_batch` (compiled: XLA on JAX and
TensorFlow; PyTorch runs eagerly as Keras has no torch compile by default),
timed after warm-up calls; the median of `--steps` calls is reported.
Analytic FLOPs (see `common.train_step_flops`) divided by the step time give
the achieved FLOP/s; MFU divides that by a `--matmul-size` square matmul
timed in the same process on the same backend and device.

    python benchmarks/pretrain_throughput.py --sizes tiny,small --batch 8 --steps 5
    python benchmarks/pretrain_throughput.py --sizes base --batch 4 --steps 3 \
        --mask-ratios 0.0,0.75 --split --backends jax,torch
"""

import argparse
import json
import os
import sys

import per_backend

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(args):
    sys.path.insert(0, HERE)
    import common
    import keras
    import keras_m3ae
    import numpy as np

    if args.threads:
        common.set_threads(args.threads)
    # The peak in the dtype the matmuls run in: bfloat16 under mixed_bfloat16.
    matmul_dtype = "bfloat16" if args.dtype and "bfloat16" in args.dtype else "float32"
    peak, peak_best = common.matmul_peak_flops(args.matmul_size, dtype=matmul_dtype)
    if args.peak_tflops:
        # MFU against the device's datasheet peak instead of a measured matmul.
        peak = args.peak_tflops * 1e12
    results = []
    for size in args.sizes.split(","):
        for ratio in [float(r) for r in args.mask_ratios.split(",")]:
            common.reset_peak_memory()
            pretrainer = common.build(size, text=not args.mae, image_mask_ratio=ratio,
                                      dtype=args.dtype, decoder_layers=args.decoder_layers)
            pretrainer.compile(optimizer=keras_m3ae.optimizers.AdamW(1e-4))
            data = common.batch(pretrainer, args.batch)
            median, best, _ = common.time_calls(
                lambda: pretrainer.train_on_batch(data), args.steps, warmup=args.warmup
            )
            flops = common.train_step_flops(pretrainer)
            row = {
                "backend": keras.backend.backend(),
                "device": common.device_kind(),
                "size": size,
                "model": "mae" if args.mae else "m3ae",
                "mask_ratio": ratio,
                "decoder_layers": pretrainer.decoder_num_layers,
                "threads": args.threads,
                "batch": args.batch,
                "step_s": median,
                "step_s_min": best,
                "examples_per_s": args.batch / median,
                "peak_memory_mb": common.peak_memory_mb(),
                "params_m": pretrainer.count_params() / 1e6,
                "train_gflop_per_example": flops["total"] / 1e9,
                "encoder_share_of_flops": flops["encoder"] / flops["total"],
                "achieved_gflops": flops["total"] * args.batch / median / 1e9,
                "matmul_peak_gflops": peak / 1e9,
                "mfu": flops["total"] * args.batch / median / peak,
            }
            if args.split:
                row.update(_split(pretrainer, data, args, common, np, keras))
            results.append(row)
            print("RESULT " + json.dumps(row), flush=True)
            del pretrainer


def _split(pretrainer, data, args, common, np, keras):
    """Forward time of the encoder on visible tokens vs the whole forward."""
    backbone = pretrainer.backbone

    class EncoderPart(keras.Model):
        def __init__(self, pretrainer):
            super().__init__()
            self.pretrainer = pretrainer

        def call(self, x):
            return self.pretrainer.backbone.encode(
                x["image"], x.get("text"), text_valid=x.get("text_valid")
            )

    rng = np.random.default_rng(0)
    d = backbone.hidden_dim
    x = {"image": rng.normal(size=(args.batch, pretrainer.num_image_kept, d)).astype("float32")}
    if backbone.has_text:
        x["text"] = rng.normal(size=(args.batch, pretrainer.num_text_kept, d)).astype("float32")
        x["text_valid"] = np.ones((args.batch, pretrainer.num_text_kept), bool)
    encoder = EncoderPart(pretrainer)
    encoder.compile(jit_compile="auto")
    pretrainer.compile(jit_compile="auto")
    enc, _, _ = common.time_calls(lambda: encoder.predict_on_batch(x), args.steps, args.warmup)
    full, _, _ = common.time_calls(
        lambda: pretrainer.predict_on_batch(data), args.steps, args.warmup
    )
    flops = common.train_step_flops(pretrainer)
    return {
        "forward_s": full,
        "encoder_forward_s": enc,
        "decoder_forward_s": full - enc,
        "encoder_share_of_forward_time": enc / full,
        "encoder_share_of_forward_flops": flops["encoder_forward"]
        / (flops["encoder_forward"] + flops["decoder_forward"]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--sizes", default="tiny,small,base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mask-ratios", default="0.75",
                        help="comma list; 0.0,0.75 prints the masking speedup")
    parser.add_argument("--mae", action="store_true", help="image-only MAE, not M3AE")
    parser.add_argument("--dtype", default=None, help="e.g. mixed_bfloat16")
    parser.add_argument("--split", action="store_true", help="time encoder vs decoder forward")
    parser.add_argument("--decoder-layers", type=int, default=None,
                        help="override the decoder depth (MAE ablates 1 vs 8)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per backend (torch.set_num_threads, TF thread pools)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="MFU denominator: the device's datasheet peak (H200 bf16 dense: 989)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    rows = [row for found in per_backend.run(__file__, args.backends.split(","), sys.argv[1:])
            .values() for row in found]

    header = (f"{'backend':10} {'dev':4} {'size':5} {'mask':>4} {'batch':>5} {'step s':>8} "
              f"{'ex/s':>7} {'peak MB':>8} {'GFLOP/ex':>8} {'GFLOP/s':>8} {'peak':>7} {'MFU':>6}")
    print(header)
    for r in rows:
        print(f"{r['backend']:10} {r['device']:4} {r['size']:5} {r['mask_ratio']:4.2f} "
              f"{r['batch']:5d} {r['step_s']:8.3f} {r['examples_per_s']:7.2f} "
              f"{r['peak_memory_mb']:8.0f} {r['train_gflop_per_example']:8.2f} "
              f"{r['achieved_gflops']:8.1f} {r['matmul_peak_gflops']:7.1f} {r['mfu']:6.1%}")
    split = [r for r in rows if "forward_s" in r]
    if split:
        print("\nencoder / decoder forward split (decoder = full forward - encoder)")
        for r in split:
            print(f"{r['backend']:10} {r['size']:5} mask {r['mask_ratio']:.2f}: forward "
                  f"{r['forward_s']:.3f}s, encoder {r['encoder_forward_s']:.3f}s "
                  f"({r['encoder_share_of_forward_time']:.0%} of time, "
                  f"{r['encoder_share_of_forward_flops']:.0%} of FLOPs), decoder "
                  f"{r['decoder_forward_s']:.3f}s")
    ratios = sorted({r["mask_ratio"] for r in rows})
    if 0.0 in ratios and len(ratios) > 1:
        print("\nmasking speedup (step time at ratio 0 / at ratio r)")
        for r in rows:
            if r["mask_ratio"] == 0.0:
                continue
            base = [b for b in rows if b["mask_ratio"] == 0.0 and b["backend"] == r["backend"]
                    and b["size"] == r["size"]]
            if base:
                print(f"{r['backend']:10} {r['size']:5} ratio {r['mask_ratio']:.2f}: "
                      f"{base[0]['step_s'] / r['step_s']:.2f}x (FLOPs "
                      f"{base[0]['train_gflop_per_example'] / r['train_gflop_per_example']:.2f}x)")
    out = os.environ.get("BENCH_JSON")
    if out:
        with open(out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
