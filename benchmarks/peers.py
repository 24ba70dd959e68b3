"""The peers our training step is measured against, and our matching models.

- The reference M3AE (JAX/Flax): a train step built on the reference
  repository's own model and losses (`m3ae/model.py` of a checkout of
  young-geng/m3ae_public, imported from the path given; nothing is copied
  from it) with the optax AdamW of its `m3ae_main.py` (betas 0.9/0.95,
  weight decay 0.05 with its exclusions, global-norm clipping at 1e9, text
  loss weight 0.1), jitted with its state donated. Needs flax, optax and
  ml_collections. `ours_for_reference` is our M3AE with the same sizes,
  loss weights, AdamW and (unless `exact_gelu`) the reference's tanh GELU.
- transformers' `ViTMAEForPreTraining` (PyTorch), built from a
  `ViTMAEConfig` (no download) with our MAE's dimensions, trained with
  `torch.optim.AdamW`. Needs transformers. `ours_for_vitmae` is our MAE
  (`vocabulary_size=None`) with the same sizes.

A peer that cannot be built raises `PeerUnavailable` with a one-line reason.
Both peers run in any Keras backend's process (the reference needs jax, the
ViTMAE peer torch, both installed with this project's extras).
"""

import os
import sys

import common

# The reference M3AE trains at 256 px (patch 16: 256 patches) with 64 tokens;
# MAE (and ViTMAE) at 224 px.
REFERENCE_IMAGE_SIZE = {"tiny": 64, "small": 256, "base": 256}
# Image / text loss weights of the reference's m3ae_main.py.
TEXT_LOSS_WEIGHT = 0.1
REFERENCE = "reference Flax M3AE"
VITMAE = "transformers ViTMAE"


class PeerUnavailable(Exception):
    """A peer that is not installed or not given; the message says which and how."""


def batch_arrays(batch, image_size, text_length, vocabulary_size, seed=0):
    """Random images in [-1, 1] and captions of 8 to `text_length - 1` real tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, text_length, batch)
    return {
        "images": rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype("float32"),
        "token_ids": rng.integers(1, vocabulary_size, (batch, text_length)).astype("int32"),
        "padding_mask": (np.arange(text_length)[None] < lengths[:, None]).astype("int32"),
    }


# --- The reference Flax M3AE ---


def import_reference(path):
    """The reference's `m3ae.model` module from a checkout at `path`."""
    if not path:
        raise PeerUnavailable("not given (--reference PATH: a checkout of young-geng/m3ae_public)")
    if not os.path.isfile(os.path.join(path, "m3ae", "model.py")):
        raise PeerUnavailable(f"{path} has no m3ae/model.py: not a checkout of "
                              "young-geng/m3ae_public")
    sys.path.insert(0, os.path.abspath(path))
    try:
        import flax  # noqa: F401
        import optax  # noqa: F401

        from m3ae import model
    except ImportError as e:
        raise PeerUnavailable(f"not installed: it needs {e.name} (pip install flax optax "
                              "ml_collections, in a separate venv)") from None
    return model


def reference_step(ref, size, batch):
    """The reference model's jitted, donating train step.

    Returns:
        (step, args, grad_fn): `step(*args)` returns `(state, rng, loss)`
        and donates `args[0]`; `grad_fn(params, *args[1:])` is the jitted
        forward + backward alone.
    """
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
    return jitted, args, jax.jit(jax.value_and_grad(loss_fn))


def reference_callable(jitted, args):
    """One reference train step that waits for its result; keeps the donated state."""
    live = list(args)

    def run():
        live[0], live[1], loss = jitted(*live)
        loss.block_until_ready()

    return run


def ours_for_reference(size, dtype=None, exact_gelu=False):
    """Our compiled M3AE with the reference's sizes, image size, loss weights and AdamW."""
    import keras

    import keras_m3ae

    c = dict(common.SIZES[size], image_size=REFERENCE_IMAGE_SIZE[size])
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


# --- transformers ViTMAE ---


def torch_device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_vitmae(size, mask_ratio=0.75, norm_pix_loss=True):
    """transformers' `ViTMAEForPreTraining` with our MAE's sizes, in training mode."""
    try:
        from transformers import ViTMAEConfig
        from transformers import ViTMAEForPreTraining
    except ImportError:
        raise PeerUnavailable("not installed: it needs transformers (pip install transformers, "
                              "keeping the installed torch)") from None
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
        norm_pix_loss=norm_pix_loss,
        layer_norm_eps=1e-6,
    )
    return ViTMAEForPreTraining(config).to(torch_device()).train()


def vitmae_callable(peer, images, fused=False):
    """One ViTMAE AdamW step (forward, loss, backward, update) that waits for the device.

    `fused`: `torch.optim.AdamW(fused=True)` instead of its default (a loop
    over the tensors on CPU).
    """
    import torch

    device = torch_device()
    optimizer = torch.optim.AdamW(peer.parameters(), lr=1e-4, fused=fused or None)
    # transformers takes channels-first pixels.
    pixels = torch.tensor(images).permute(0, 3, 1, 2).contiguous().to(device)

    def run():
        peer(pixel_values=pixels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    return run


def ours_for_vitmae(size, mask_ratio=0.75, dtype=None, norm_pix_loss=True):
    """Our compiled MAE with ViTMAE's sizes and the pretraining AdamW."""
    import keras_m3ae

    model = common.build(size, text=False, image_mask_ratio=mask_ratio, dtype=dtype)
    model.norm_pix_loss = norm_pix_loss
    model.compile(optimizer=keras_m3ae.optimizers.pretrain_optimizer(1e-4))
    return model
