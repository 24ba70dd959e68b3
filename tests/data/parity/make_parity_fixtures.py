"""Writes the trajectory-parity fixtures with the ORIGINAL training code.

Not run by CI, and nothing here is imported by the library or its tests.
Two tiny models are trained for 30 optimizer steps by the originals'
own code, from fixed initial weights, on fixed batches, with fixed masking
noise; everything needed to replay the run elsewhere is saved:

- MAE: Hugging Face `ViTMAEForPreTraining`, trained as facebookresearch/mae's
  `main_pretrain.py` + `engine_pretrain.py` do: `torch.optim.AdamW` over
  timm's `add_weight_decay` parameter groups, betas (0.9, 0.95), no
  gradient clipping (`loss_scaler(..., clip_grad=None)`), mask noise given
  per example through `noise=`.
- M3AE: young-geng/m3ae_public's Flax `MaskedMultimodalAutoencoder`,
  stepped by `m3ae_main.py`'s own `create_train_step` (its loss, its
  `pmap`/`pmean`, `state.apply_gradients`) with `m3ae_main.py`'s optax
  chain: `clip_by_global_norm(FLAGS.clip_gradient=1e9)` then
  `optax.adamw(b1=0.9, b2=0.95, mask=no_decay_list)`. The reference draws
  ONE noise row per modality per batch (`random_masking`); the row is
  given here by standing in for `jax.random.uniform` on 1-D shapes while
  `random_masking` runs, and is saved tiled over the batch (every example
  of a step has the same row), which is the `(B, L)` noise keras-m3ae's
  `image_noise=`/`text_noise=` take.

Deviations from the originals' defaults, the same on both sides: constant
learning rate 1e-3 (no warmup/cosine; `m3ae_main.py` builds a
`warmup_cosine_decay_schedule`, given here with init = peak = end = 1e-3),
weight decay 0.05, eps 1e-8, betas (0.9, 0.95). `README.md` beside this
script describes every file, key, shape and convention.

After writing, the script replays both runs from the SAVED files (the
`.pkl` through `cloudpickle`, the HF directory through `from_pretrained`)
in float32 (must be bit-identical: the runs are deterministic on CPU) and
in float64 (the originals' own float noise), and records both in
`parity_meta.json`.

Run it in a throwaway environment outside the repository (the reference
packages must never enter the project's environment):

    python -m venv /work/refenv --system-site-packages   # jax 0.10.2, torch 2.13.0+cpu
    /work/refenv/bin/pip install --no-deps flax==0.12.8 optax==0.2.8 chex==0.1.92 \
        toolz==1.2.0 ml_collections==1.1.0 transformers==5.25.0 safetensors==0.8.0
    # reference code: young-geng/m3ae_public (m3ae/ package), checked out anywhere
    /work/refenv/bin/python tests/data/parity/make_parity_fixtures.py \
        --m3ae /tmp/refsrc/m3ae_public [--out tests/data/parity]

Versions used for the committed fixtures: python 3.11, jax/jaxlib 0.10.2,
flax 0.12.8, optax 0.2.8, chex 0.1.92, transformers 5.25.0, torch
2.13.0+cpu, numpy 2.4.6, cloudpickle 3.1.3; m3ae_public at its newest
commit (the code is unchanged since 2022). `m3ae_main.py` imports packages
it does not use in a train step (wandb, gcsfs, skimage, torchvision, timm,
dill, vqgan_jax); missing ones are replaced by empty stand-in modules for
the import only.
"""

import argparse
import importlib
import importlib.machinery
import json
import os
import subprocess
import sys
import types

import numpy as np

STEPS = 30
BATCH = 4
IMAGE = 16
PATCH = 4
GRID = IMAGE // PATCH
NUM_PATCHES = GRID * GRID
TEXT = 16
VOCAB = 100
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.05
BETAS = (0.9, 0.95)
EPSILON = 1e-8
MASK_RATIO = 0.75
IMAGE_LOSS_WEIGHT = 1.0
TEXT_LOSS_WEIGHT = 0.5  # the paper and the reference README's command; m3ae_main.py's flag default is 0.1
NORM_PIX_LOSS = False  # main_pretrain.py's default (PRETRAIN.md's command passes --norm_pix_loss)

M3AE_INIT = "m3ae_init.pkl"
M3AE_TRAJECTORY = "m3ae_trajectory.npz"
M3AE_FINAL = "m3ae_final.npz"
M3AE_LOSSES = "m3ae_losses.txt"
MAE_INIT = "mae_hf_init"
FIXED_TABLES = ("vit.embeddings.position_embeddings", "decoder.decoder_pos_embed")
MAE_TRAJECTORY = "mae_trajectory.npz"
MAE_FINAL = "mae_final.npz"
MAE_LOSSES = "mae_losses.txt"
META = "parity_meta.json"


def _rng(seed):
    return np.random.default_rng(seed)


def _images(seed):
    """`(STEPS, BATCH, IMAGE, IMAGE, 3)` float32, channels last.

    Standard normal values rounded to multiples of 1/32 (8 significant
    bits, exact in float32), so the compressed `.npz` stays small.
    """
    images = _rng(seed).normal(size=(STEPS, BATCH, IMAGE, IMAGE, 3))
    return (np.round(images * 32) / 32).astype("float32")


def _write_losses(path, columns, header):
    with open(path, "w") as f:
        f.write("# " + " ".join(header) + "\n")
        for step, row in enumerate(zip(*columns)):
            f.write(" ".join([str(step)] + [repr(float(v)) for v in row]) + "\n")


# --------------------------------------------------------------------------
# Reference M3AE (Flax), stepped by m3ae_main.py's own train step.
# --------------------------------------------------------------------------

_UNUSED_IMPORTS = (
    "wandb", "gcsfs", "dill", "skimage", "skimage.io", "skimage.color", "torchvision",
    "torchvision.transforms", "timm", "timm.data", "timm.data.constants", "vqgan_jax",
    "vqgan_jax.modeling_flax_vqgan",
)


class _Placeholder:
    """Whatever an unused import's attribute is; never called in a train step."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Placeholder()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder()


class _StandInModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder


def _stand_in_unused_imports():
    """Installs stand-ins for the missing unused imports; returns their names."""
    # torch probes for dill and transformers for torchvision once, at their
    # import: import them before any stand-in exists.
    import torch  # noqa: F401
    from transformers import ViTMAEForPreTraining  # noqa: F401

    installed = []
    for name in _UNUSED_IMPORTS:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            module = _StandInModule(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = module
            installed.append(name)
    return installed


# Masking rows for the trace in progress, image first, then text (the order
# of `random_masking` calls in `forward_encoder`).
_NOISE_QUEUE = []


def _install_noise_hooks(m3ae_main):
    """Feeds given rows to `random_masking` inside `m3ae_main`'s train step.

    `train_step_fn(state, rng, ...)` passes `rng` to `JaxRNG(rng)`; here
    `rng` is a dict `{"rng", "image_noise", "text_noise"}` (so the rows are
    traced inputs of the pmapped step, not constants of its first trace)
    and the stand-in `JaxRNG` queues the rows. `random_masking` draws its
    row with `jax.random.uniform(rng, (length,))`; 1-D draws take the
    queued rows, any other draw (DropPath's `(B, 1, 1)`) is the real one.
    """
    import jax

    base = m3ae_main.JaxRNG

    class NoiseCarryingRNG(base):
        def __init__(self, rng):
            if isinstance(rng, dict):
                _NOISE_QUEUE[:] = [rng["image_noise"], rng["text_noise"]]
                rng = rng["rng"]
            super().__init__(rng)

    m3ae_main.JaxRNG = NoiseCarryingRNG
    uniform = jax.random.uniform

    def given_uniform(key, shape=(), dtype=float, minval=0.0, maxval=1.0):
        if len(tuple(shape)) == 1 and _NOISE_QUEUE:
            row = _NOISE_QUEUE.pop(0)
            assert tuple(row.shape) == tuple(shape), (row.shape, shape)
            return row.astype(dtype)
        return uniform(key, shape, dtype, minval, maxval)

    jax.random.uniform = given_uniform


def _flag_argv():
    """`m3ae_main.py`'s command line for this run (all else its defaults)."""
    return [
        "m3ae_main",
        f"--patch_size={PATCH}",
        f"--batch_size={BATCH}",
        f"--image_loss_weight={IMAGE_LOSS_WEIGHT}",
        f"--text_loss_weight={TEXT_LOSS_WEIGHT}",
        f"--weight_decay={WEIGHT_DECAY}",
        f"--lr_peak_value={LEARNING_RATE}",
        "--m3ae.emb_dim=32", "--m3ae.dec_emb_dim=32", "--m3ae.depth=2",
        "--m3ae.dec_depth=2", "--m3ae.num_heads=4", "--m3ae.dec_num_heads=2",
        "--m3ae.mlp_ratio=4", "--m3ae.use_type_embedding=True",
        f"--m3ae.image_mask_ratio={MASK_RATIO}", f"--m3ae.text_mask_ratio={MASK_RATIO}",
        f"--data.image_size={IMAGE}", f"--data.tokenizer_max_length={TEXT}",
    ]


def _import_m3ae_main(m3ae_path):
    sys.path.insert(0, os.path.abspath(m3ae_path))
    import absl.flags

    # ml_collections defines the `--m3ae.*` override flags from sys.argv
    # when m3ae_main.py declares its ConfigDict flags, at import.
    argv, sys.argv = sys.argv, _flag_argv()
    stand_ins = _stand_in_unused_imports()
    try:
        from m3ae import m3ae_main
    finally:
        sys.argv = argv
        # Gone again for everything imported later (transformers probes torchvision).
        for name in stand_ins:
            del sys.modules[name]
    flags = absl.flags.FLAGS
    if not flags.is_parsed():
        flags(_flag_argv())
    _install_noise_hooks(m3ae_main)
    return m3ae_main


def _m3ae_model(m3ae_main):
    return m3ae_main.MaskedMultimodalAutoencoder(
        config_updates=m3ae_main.FLAGS.m3ae, text_vocab_size=VOCAB,
        image_output_dim=PATCH * PATCH * 3,
    )


def _m3ae_train_state(m3ae_main, model, params):
    """`m3ae_main.main`'s TrainState and optax chain, with a constant rate."""
    import flax
    import optax

    flags = m3ae_main.FLAGS
    # m3ae_main: warmup_cosine_decay_schedule(init, peak, warmup, decay, end),
    # here init = peak = end, so the rate is LEARNING_RATE at every step.
    learning_rate = optax.warmup_cosine_decay_schedule(
        init_value=LEARNING_RATE, peak_value=LEARNING_RATE, warmup_steps=0,
        decay_steps=10 * STEPS, end_value=LEARNING_RATE,
    )

    def get_weight_decay_mask(params):
        flattened = flax.traverse_util.flatten_dict(flax.core.frozen_dict.unfreeze(params))

        def decay(key):
            return all([k not in model.no_decay_list() for k in key])

        return flax.traverse_util.unflatten_dict({key: decay(key) for key in flattened})

    state = m3ae_main.M3AETrainState.create(
        params=flax.core.frozen_dict.unfreeze(params),
        tokenizer_params=None,
        apply_fn=None,
        tx=optax.chain(
            optax.clip_by_global_norm(flags.clip_gradient),
            optax.adamw(
                learning_rate=learning_rate, weight_decay=flags.weight_decay,
                b1=BETAS[0], b2=BETAS[1], eps=EPSILON, mask=get_weight_decay_mask,
            ),
        ),
    )
    return state, learning_rate


def _flat_params(params):
    import flax

    tree = flax.core.frozen_dict.unfreeze(params)["params"]
    flat = flax.traverse_util.flatten_dict(tree)
    return {"/".join(key): np.asarray(value) for key, value in flat.items()}


def train_m3ae(m3ae_main, model, params, images, token_ids, image_rows, text_rows,
               dtype="float32"):
    """30 steps of `m3ae_main`'s train step; per-step losses and final params."""
    import flax
    import jax
    import jax.numpy as jnp

    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, dtype), params)
    state, learning_rate = _m3ae_train_state(m3ae_main, model, params)
    train_step_fn, _ = m3ae_main.create_train_step(model, learning_rate)
    devices = jax.local_devices()[:1]
    state = flax.jax_utils.replicate(state, devices)
    accumulated_grads = flax.jax_utils.replicate(jnp.array(0, jnp.int32), devices)
    accumulated_steps = flax.jax_utils.replicate(jnp.array(0, jnp.int32), devices)
    key = jax.random.PRNGKey(0)
    records = {"loss": [], "image_loss": [], "text_loss": []}
    for step in range(STEPS):
        batch = {
            "image": images[step][None].astype(dtype),
            "text": token_ids[step][None].astype(np.int32),
            # Full-length captions: no padding (reference: 1.0 = padding).
            "text_padding_mask": np.zeros((1, BATCH, TEXT), np.float32),
        }
        key, step_key = jax.random.split(key)
        rng = {
            "rng": step_key[None],
            "image_noise": image_rows[step][None].astype(np.float32),
            "text_noise": text_rows[step][None].astype(np.float32),
        }
        state, metrics, _, accumulated_grads, accumulated_steps = train_step_fn(
            state, rng, accumulated_grads, accumulated_steps, batch
        )
        metrics = jax.device_get(metrics)
        for name in records:
            records[name].append(float(np.asarray(metrics[name])[0]))
        assert not _NOISE_QUEUE, "a masking row was not used"
    final = flax.jax_utils.unreplicate(state)
    return {k: np.array(v, np.float64) for k, v in records.items()}, _flat_params(final.params)


def _load_m3ae_pickle(path):
    import cloudpickle

    with open(path, "rb") as f:
        return cloudpickle.load(f)


def make_m3ae(m3ae_main, out, seed=100):
    import cloudpickle
    import jax
    import jax.numpy as jnp
    from m3ae import utils as m3ae_utils

    model = _m3ae_model(m3ae_main)
    # m3ae_main.main: set_random_seed(FLAGS.seed), then model.init with
    # next_rng(keys=model.rng_keys()) on zeros of batch 2.
    m3ae_utils.set_random_seed(m3ae_main.FLAGS.seed)
    patch_dim = PATCH * PATCH * 3
    params = model.init(
        m3ae_main.next_rng(keys=model.rng_keys()),
        jnp.zeros((2, NUM_PATCHES, patch_dim), jnp.float32),
        jnp.zeros((2, TEXT), jnp.int32),
        jnp.zeros((2, TEXT)),
        deterministic=False,
    )
    params = jax.device_get(params)
    state, _ = _m3ae_train_state(m3ae_main, model, params)
    variant = m3ae_main.get_user_flags(m3ae_main.FLAGS, m3ae_main.FLAGS_DEF)
    variant.update(effective_lr=LEARNING_RATE, parity_fixture="constant lr; see parity_meta.json")
    with open(os.path.join(out, M3AE_INIT), "wb") as f:
        cloudpickle.dump({"step": 0, "epoch": 0, "variant": variant,
                          "state": jax.device_get(state)}, f)

    rng = _rng(seed)
    images = _images(seed + 1)
    token_ids = rng.integers(0, VOCAB, size=(STEPS, BATCH, TEXT)).astype("int32")
    image_rows = rng.uniform(size=(STEPS, NUM_PATCHES)).astype("float32")
    text_rows = rng.uniform(size=(STEPS, TEXT)).astype("float32")
    init = _load_m3ae_pickle(os.path.join(out, M3AE_INIT))["state"].params
    records, final = train_m3ae(m3ae_main, model, init, images, token_ids, image_rows, text_rows)
    np.savez_compressed(
        os.path.join(out, M3AE_TRAJECTORY),
        images=images,
        token_ids=token_ids,
        padding_mask=np.ones((STEPS, BATCH, TEXT), bool),
        image_noise=np.repeat(image_rows[:, None, :], BATCH, axis=1),
        text_noise=np.repeat(text_rows[:, None, :], BATCH, axis=1),
        losses=records["loss"],
        image_losses=records["image_loss"],
        text_losses=records["text_loss"],
    )
    np.savez(os.path.join(out, M3AE_FINAL), **final)
    _write_losses(
        os.path.join(out, M3AE_LOSSES),
        [records["loss"], records["image_loss"], records["text_loss"]],
        ["step", "loss", "image_loss", "text_loss"],
    )
    return model, records, final


def m3ae_decay_groups(model, params):
    """Parameter names `optax.adamw`'s mask decays / exempts (`m3ae_main.py`'s rule).

    A parameter is decayed unless some part of its path is in
    `model.no_decay_list()` (compared whole: `image_embedding` is not
    `embedding`).
    """
    import flax

    flattened = flax.traverse_util.flatten_dict(flax.core.frozen_dict.unfreeze(params))
    no_decay = model.no_decay_list()
    decayed = {"/".join(k[1:]): all(part not in no_decay for part in k) for k in flattened}
    return sorted(k for k, v in decayed.items() if v), sorted(k for k, v in decayed.items() if not v)


# --------------------------------------------------------------------------
# MAE: Hugging Face ViTMAE trained as facebookresearch/mae's main_pretrain.py.
# --------------------------------------------------------------------------


def timm_decay_groups(model):
    """timm 0.3.2's `add_weight_decay(model, weight_decay)` as main_pretrain.py calls it.

    Frozen parameters are left out; 1-D tensors and names ending in
    `.bias` get no decay (MAE passes no skip list).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if len(param.shape) == 1 or name.endswith(".bias"):
            no_decay.append(name)
        else:
            decay.append(name)
    return decay, no_decay


def train_mae(model, images, noise, dtype="float32"):
    import torch

    torch_dtype = getattr(torch, dtype)
    model = model.to(torch_dtype)
    model.train(True)
    decay, no_decay = timm_decay_groups(model)
    named = dict(model.named_parameters())
    param_groups = [
        {"params": [named[n] for n in no_decay], "weight_decay": 0.0},
        {"params": [named[n] for n in decay], "weight_decay": WEIGHT_DECAY},
    ]
    optimizer = torch.optim.AdamW(param_groups, lr=LEARNING_RATE, betas=BETAS, eps=EPSILON)
    losses = []
    optimizer.zero_grad()
    for step in range(STEPS):
        x = torch.from_numpy(images[step]).permute(0, 3, 1, 2).contiguous().to(torch_dtype)
        loss = model(pixel_values=x, noise=torch.from_numpy(noise[step])).loss
        losses.append(loss.item())
        # engine_pretrain.py: loss_scaler(loss, optimizer, clip_grad=None) is
        # backward + step (no clipping; the AMP scaler is off without CUDA).
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return np.array(losses, np.float64), _checkpoint_arrays(model)


def _checkpoint_arrays(model):
    """The model's tensors under the names its `model.safetensors` stores them.

    transformers 5.x renames ViTMAE's modules at run time
    (`vit.layers.0.attention.q_proj`) but writes the 4.x names
    (`vit.encoder.layer.0.attention.attention.query`), which is what
    checkpoints on disk and the Hub have. The fixed sin-cos position tables
    (`requires_grad=False`) are included; they never change.
    """
    import tempfile

    from safetensors.numpy import load_file

    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        return dict(load_file(os.path.join(directory, "model.safetensors")))


def checkpoint_decay_groups(arrays, frozen=("position_embeddings", "decoder_pos_embed")):
    """timm's rule applied to the checkpoint's names (same split as the live names)."""
    decay, no_decay = [], []
    for name in sorted(arrays):
        if name.split(".")[-1] in frozen:
            continue
        if arrays[name].ndim == 1 or name.endswith(".bias"):
            no_decay.append(name)
        else:
            decay.append(name)
    return decay, no_decay


def _new_vitmae(seed):
    import torch
    from transformers import ViTMAEConfig
    from transformers import ViTMAEForPreTraining
    from transformers.models.vit_mae import modeling_vit_mae

    torch.manual_seed(seed)
    config = ViTMAEConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        image_size=IMAGE, patch_size=PATCH, num_channels=3, qkv_bias=True,
        decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
        decoder_intermediate_size=128, mask_ratio=MASK_RATIO, norm_pix_loss=NORM_PIX_LOSS,
    )
    model = ViTMAEForPreTraining(config)
    # transformers 5.x can leave the fixed sin-cos tables at zero: fill them
    # as its own `initialize_weights` does (as every real checkpoint has them).
    with torch.no_grad():
        for table in (model.vit.embeddings.position_embeddings, model.decoder.decoder_pos_embed):
            pos = modeling_vit_mae.build_2d_sinusoidal_position_embedding(
                GRID, GRID, embed_dim=table.shape[-1], cls_token=True
            )
            half = pos.shape[-1] // 2
            table.copy_(torch.cat([pos[..., half:], pos[..., :half]], dim=-1)[None])
    return model


def _load_vitmae(directory):
    from transformers import ViTMAEForPreTraining

    # use_kernels=False: no hub kernels (the default would fetch them).
    model = ViTMAEForPreTraining.from_pretrained(directory, use_kernels=False)
    # transformers 5.x's `from_pretrained` makes every floating tensor a
    # trainable Parameter, the fixed sin-cos tables included (a fresh
    # `ViTMAEForPreTraining(config)` has them `requires_grad=False`, as MAE's
    # `pos_embed`/`decoder_pos_embed` are): freeze them again, or AdamW
    # trains (and decays) them.
    for table in FIXED_TABLES:
        model.get_parameter(table).requires_grad_(False)
    return model


def make_mae(out, seed=200):
    model = _new_vitmae(seed)
    directory = os.path.join(out, MAE_INIT)
    model.save_pretrained(directory)
    for name in os.listdir(directory):
        if name not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(directory, name))
    rng = _rng(seed + 1)
    images = _images(seed + 2)
    noise = rng.uniform(size=(STEPS, BATCH, NUM_PATCHES)).astype("float32")
    losses, final = train_mae(_load_vitmae(directory), images, noise)
    np.savez_compressed(os.path.join(out, MAE_TRAJECTORY), images=images, image_noise=noise, losses=losses)
    np.savez(os.path.join(out, MAE_FINAL), **final)
    _write_losses(os.path.join(out, MAE_LOSSES), [losses], ["step", "loss"])
    return model, losses, final


# --------------------------------------------------------------------------
# Replays from the saved files.
# --------------------------------------------------------------------------


def replay(out, m3ae_path, dtype):
    """Trains both again from the saved fixtures; returns losses and finals."""
    m3ae_main = _import_m3ae_main(m3ae_path)
    model = _m3ae_model(m3ae_main)
    data = np.load(os.path.join(out, M3AE_TRAJECTORY))
    assert (data["image_noise"] == data["image_noise"][:, :1]).all()
    init = _load_m3ae_pickle(os.path.join(out, M3AE_INIT))["state"].params
    m3ae_records, m3ae_final = train_m3ae(
        m3ae_main, model, init, data["images"], data["token_ids"],
        data["image_noise"][:, 0], data["text_noise"][:, 0], dtype,
    )
    data = np.load(os.path.join(out, MAE_TRAJECTORY))
    mae_losses, mae_final = train_mae(
        _load_vitmae(os.path.join(out, MAE_INIT)), data["images"], data["image_noise"], dtype
    )
    return {"m3ae": (m3ae_records["loss"], m3ae_final), "mae": (mae_losses, mae_final)}


def _without_key_bias(name, value):
    if name.endswith("Attention_0/Dense_0/bias"):  # reference M3AE: fused [q | k | v]
        third = value.shape[-1] // 3
        return np.concatenate([value[:third], value[2 * third:]])
    if "key.bias" in name:
        return value[:0]
    return value


def _differences(out, result):
    """Max relative per-step loss and max abs final-weight differences."""
    report = {}
    for name, (losses, final) in result.items():
        saved_losses = np.load(os.path.join(out, f"{name}_trajectory.npz"))["losses"]
        saved_final = dict(np.load(os.path.join(out, f"{name}_final.npz")))
        assert sorted(saved_final) == sorted(final)
        per_param = {}
        per_param_no_key_bias = {}
        for k in final:
            diff = np.abs(final[k].astype(np.float64) - saved_final[k].astype(np.float64))
            per_param[k] = float(diff.max()) if diff.size else 0.0
            rest = _without_key_bias(k, diff)
            per_param_no_key_bias[k] = float(rest.max()) if rest.size else 0.0
        worst = sorted(per_param, key=per_param.get, reverse=True)[:3]
        report[name] = {
            "loss_max_relative": float(np.max(np.abs(losses - saved_losses) / np.abs(saved_losses))),
            "final_weights_max_abs": max(per_param.values()),
            "final_weights_max_abs_without_key_bias": max(per_param_no_key_bias.values()),
            "largest": {k: per_param[k] for k in worst},
            "largest_without_key_bias": {
                k: per_param_no_key_bias[k]
                for k in sorted(per_param_no_key_bias, key=per_param_no_key_bias.get,
                                reverse=True)[:3]
            },
        }
    return report


def _replay_main(args):
    result = replay(args.out, args.m3ae, args.dtype)
    print("REPLAY " + json.dumps(_differences(args.out, result)))


def _replay_in_subprocess(args, dtype):
    env = dict(os.environ)
    if dtype == "float64":
        env["JAX_ENABLE_X64"] = "1"
    command = [sys.executable, os.path.abspath(__file__), "--m3ae", args.m3ae, "--out", args.out,
               "--replay", "--dtype", dtype]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    line = [line for line in output.splitlines() if line.startswith("REPLAY ")][-1]
    return json.loads(line[len("REPLAY "):])


def _versions():
    import importlib.metadata as metadata

    names = ["jax", "jaxlib", "flax", "optax", "chex", "transformers", "torch", "numpy",
             "cloudpickle", "safetensors"]
    return {n: metadata.version(n) for n in names} | {"python": sys.version.split()[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m3ae", required=True, help="checkout of young-geng/m3ae_public")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--replay", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out = os.path.abspath(args.out)
    if args.replay:
        return _replay_main(args)

    os.makedirs(args.out, exist_ok=True)
    m3ae_main = _import_m3ae_main(args.m3ae)
    model, m3ae_records, _ = make_m3ae(m3ae_main, args.out)
    init = _load_m3ae_pickle(os.path.join(args.out, M3AE_INIT))["state"].params
    m3ae_decay, m3ae_exempt = m3ae_decay_groups(model, init)
    vitmae, mae_losses, mae_final = make_mae(args.out)
    live_decay, live_exempt = timm_decay_groups(vitmae)
    mae_decay, mae_exempt = checkpoint_decay_groups(mae_final)
    assert (len(live_decay), len(live_exempt)) == (len(mae_decay), len(mae_exempt))
    frozen = [n for n, p in vitmae.named_parameters() if not p.requires_grad]

    repeat = _replay_in_subprocess(args, "float32")
    double = _replay_in_subprocess(args, "float64")
    meta = {
        "steps": STEPS, "batch_size": BATCH, "image_size": IMAGE, "patch_size": PATCH,
        "text_length": TEXT, "vocabulary_size": VOCAB,
        "learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY, "betas": list(BETAS),
        "epsilon": EPSILON, "mask_ratio": MASK_RATIO,
        "m3ae": {
            "image_loss_weight": IMAGE_LOSS_WEIGHT, "text_loss_weight": TEXT_LOSS_WEIGHT,
            "norm_pix_loss": False, "clip_by_global_norm": 1e9,
            "no_decay_list": model.no_decay_list(),
            "decayed": m3ae_decay, "not_decayed": m3ae_exempt,
            "first_losses": m3ae_records["loss"][:3].tolist(),
        },
        "mae": {
            "norm_pix_loss": NORM_PIX_LOSS, "clip_grad": None,
            "decayed": mae_decay, "not_decayed": mae_exempt,
            "decayed_live_names": live_decay, "not_decayed_live_names": live_exempt,
            "frozen_live_names": frozen,
            "first_losses": mae_losses[:3].tolist(),
        },
        "repeat_run_float32": repeat,
        "float64_vs_float32": double,
        "versions": _versions(),
    }
    with open(os.path.join(args.out, META), "w") as f:
        json.dump(meta, f, indent=1)
    sizes = {}
    for root, _, files in os.walk(args.out):
        for name in files:
            path = os.path.join(root, name)
            sizes[os.path.relpath(path, args.out)] = os.path.getsize(path)
    print(json.dumps({"repeat_run_float32": repeat, "float64_vs_float32": double,
                      "total_bytes": sum(sizes.values())}, indent=1))


if __name__ == "__main__":
    main()
