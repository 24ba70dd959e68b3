"""Where one backend's train step is faster than another's: the step by parts.

Times, per Keras backend (each in its own subprocess, as in
`pretrain_throughput.py`), a whole M3AE training step (`train_on_batch`,
AdamW) and the parts it is made of, each trained alone the same way (its own
small `keras.Model`, `train_on_batch`, plain SGD, so the update is cheap):

- `encoder block`: one `TransformerBlock` on the encoder's visible tokens
  (CLS + kept patches + kept text slots), times the encoder depth;
- `decoder block`: one decoder block on the full sequence, times its depth;
- `text head + loss`: the decoder's vocabulary projection and the
  cross-entropy over all text positions;
- `rest`: the step minus the parts (embeddings, masking, gathers, image
  head and loss, AdamW over all weights, the trainer).

The parts run without an attention mask; in the step, caption padding masks
the attention, and that select lands in `rest`.

Every backend runs the same `keras.ops` graph, so a part that one backend
runs faster points at how that backend compiles it. Pin the process to one
core for steady figures:

    taskset -c 1 python benchmarks/investigations/backend_parts.py --size base --batch 8 --threads 1
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # this folder and benchmarks/ (common, per_backend)

import per_backend  # noqa: E402


def _part_models(pretrainer, batch_size, keras, np):
    """`{name: (model, x, y, repeats)}`: each part alone, with its inputs."""
    from keras_m3ae.layers.dense import TokenDense
    from keras_m3ae.layers.transformer import TransformerBlock
    from keras_m3ae.models.m3ae.m3ae_losses import token_cross_entropy

    backbone, decoder = pretrainer.backbone, pretrainer.decoder
    rng = np.random.default_rng(0)
    encoder_tokens = 1 + pretrainer.num_image_kept + (
        pretrainer.num_text_kept if backbone.has_text else 0)
    decoder_tokens = 1 + backbone.num_patches + (
        backbone.max_text_length if backbone.has_text else 0)

    def block_model(width, heads, tokens):
        inputs = keras.Input((tokens, width))
        block = TransformerBlock(width, heads, mlp_ratio=backbone.mlp_ratio,
                                 layer_norm_epsilon=backbone.layer_norm_epsilon)
        model = keras.Model(inputs, block(inputs))
        model.compile(optimizer=keras.optimizers.SGD(1e-6), loss="mean_squared_error")
        x = rng.normal(size=(batch_size, tokens, width)).astype("float32")
        return model, x, np.zeros_like(x)

    parts = {
        "encoder block": block_model(backbone.hidden_dim, backbone.num_heads, encoder_tokens)
        + (backbone.num_layers,),
        "decoder block": block_model(decoder.hidden_dim, decoder.num_heads, decoder_tokens)
        + (decoder.num_layers,),
    }
    if backbone.has_text:
        length = backbone.max_text_length
        inputs = keras.Input((length, decoder.hidden_dim))
        head = keras.Model(inputs, TokenDense(backbone.vocabulary_size)(inputs))
        head.compile(
            optimizer=keras.optimizers.SGD(1e-6),
            loss=lambda ids, logits: keras.ops.mean(token_cross_entropy(logits, ids)),
        )
        x = rng.normal(size=(batch_size, length, decoder.hidden_dim)).astype("float32")
        ids = rng.integers(0, backbone.vocabulary_size, (batch_size, length)).astype("int32")
        parts["text head + loss"] = (head, x, ids, 1)
    return parts


def worker(args):
    sys.path[:0] = [HERE, os.path.dirname(HERE)]
    import common
    import keras
    import keras_m3ae
    import numpy as np

    if args.threads:
        common.set_threads(args.threads)
    pretrainer = common.build(args.size, text=not args.mae)
    pretrainer.compile(optimizer=keras_m3ae.optimizers.AdamW(1e-4))
    data = common.batch(pretrainer, args.batch)
    timings = {}
    step, step_best, _ = common.time_calls(
        lambda: pretrainer.train_on_batch(data), args.steps, args.warmup)
    timings["step"] = dict(median=step, best=step_best, repeats=1)
    for name, (model, x, y, repeats) in _part_models(pretrainer, args.batch, keras, np).items():
        median, best, _ = common.time_calls(
            lambda: model.train_on_batch(x, y), args.steps, args.warmup)
        timings[name] = dict(median=median, best=best, repeats=repeats)
    print("RESULT " + json.dumps({"backend": keras.backend.backend(), "timings": timings}),
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="jax,tensorflow")
    parser.add_argument("--size", default="base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed calls per part (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mae", action="store_true", help="image-only MAE, not M3AE")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per backend (torch.set_num_threads, TF thread pools)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    results = {backend: found[0]["timings"] for backend, found in
               per_backend.run(__file__, args.backends.split(","), sys.argv[1:]).items() if found}

    backends = list(results)
    print(f"M3AE{' (MAE)' if args.mae else ''} {args.size}, batch {args.batch}, "
          f"threads {args.threads or 'default'}; seconds per step, median of {args.steps} "
          f"(fastest), parts times their count in the step")
    header = f"{'part':22} {'count':>5} " + " ".join(f"{b:>22}" for b in backends)
    if len(backends) > 1:
        header += f" {backends[1] + '/' + backends[0]:>22}"
    print(header)
    names = list(next(iter(results.values())))
    for name in names + ["rest"]:
        cells, medians = [], []
        for b in backends:
            t = results[b]
            if name == "rest":
                parts = [v for k, v in t.items() if k != "step"]
                median = t["step"]["median"] - sum(v["median"] * v["repeats"] for v in parts)
                best = t["step"]["best"] - sum(v["best"] * v["repeats"] for v in parts)
                count = ""
            else:
                median, best = (t[name][k] * t[name]["repeats"] for k in ("median", "best"))
                count = t[name]["repeats"]
            cells.append(f"{median:10.3f} ({best:8.3f})")
            medians.append(median)
        line = f"{name:22} {count!s:>5} " + " ".join(f"{c:>22}" for c in cells)
        if len(medians) > 1 and medians[0] > 0:
            line += f" {medians[1] / medians[0]:21.2f}x"
        print(line)


if __name__ == "__main__":
    main()
