"""Writes the checkpoint-conversion fixtures with the ORIGINAL code.

Not run by CI. Run it in a throwaway environment that has the reference
code's own dependencies (flax, optax, cloudpickle, ml_collections for the
reference M3AE; torch for the official MAE; transformers for ViTMAE):

    python tests/data/convert/make_fixtures.py \
        --m3ae /path/to/m3ae_public --mae /path/to/mae [--out tests/data/convert]

`--m3ae` is a checkout of young-geng/m3ae_public (its `m3ae/` package is
imported), `--mae` one of facebookresearch/mae (`models_mae.py` is
imported). MAE pins timm 0.3.2 and a current timm would replace the CPU
torch, so the two timm layers `models_mae.py` imports (`PatchEmbed`,
`Block`) are written out below, from the behaviour of timm 0.3.2, and
installed as a stand-in `timm` module for the import.

Every model is TINY and every weight is perturbed after initialisation, so
a dropped or swapped tensor changes the outputs. For each format the
original code's own outputs on fixed inputs and fixed masking noise are
saved next to the checkpoint as `<name>.npz`:

- `images` `(B, H, W, C)` float32 (channels last; the torch models get
  them transposed), and for M3AE `token_ids`, `padding_mask` (True = real
  token) for the unmasked encoder pass;
- `encoder_output`: the encoder on every token, no masking;
- `image_noise` (and `text_noise`): `(B, length)` masking noise; the
  reference M3AE draws one noise row per batch, so its rows are equal;
- `image_predictions`, `image_mask` (and `text_logits`, `text_mask`, the
  masked pass running on full-length `masked_token_ids`): the decoder's
  outputs for that noise.

Example:
    /tmp/refenv/bin/python tests/data/convert/make_fixtures.py \
        --m3ae /tmp/refsrc/m3ae_public --mae /tmp/refsrc/mae
"""

import argparse
import json
import os
import sys
import types

import numpy as np

BATCH = 2
IMAGE = 32
PATCH = 8
GRID = IMAGE // PATCH
NUM_PATCHES = GRID * GRID
TEXT = 16
VOCAB = 100


def _rng(seed):
    return np.random.default_rng(seed)


def _images(seed):
    return _rng(seed).normal(size=(BATCH, IMAGE, IMAGE, 3)).astype("float32")


# --------------------------------------------------------------------------
# Reference M3AE / MAE (JAX/Flax), saved as m3ae_main.py / mae_main.py do.
# --------------------------------------------------------------------------


def _flatten(config, prefix):
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(_flatten(value, key))
        else:
            out[f"{prefix}.{key}"] = value
    return out


def _perturb_flax(params, seed):
    import jax

    rng = _rng(seed)
    return jax.tree_util.tree_map(
        lambda p: np.asarray(p + 0.05 * rng.normal(size=p.shape), dtype=np.float32), params
    )


def _train_state(model_module, params, no_decay):
    import flax
    import optax

    def get_weight_decay_mask(params):
        flat = flax.traverse_util.flatten_dict(flax.core.frozen_dict.unfreeze(params))

        def decay(key):
            return all([k not in no_decay for k in key])

        return flax.traverse_util.unflatten_dict({key: decay(key) for key in flat})

    learning_rate = optax.warmup_cosine_decay_schedule(0.0, 1.5e-4, 10, 100, 0.0)
    return model_module.M3AETrainState.create(
        params=flax.core.frozen_dict.unfreeze(params),
        tokenizer_params=None,
        apply_fn=None,
        tx=optax.chain(
            optax.clip_by_global_norm(1e9),
            optax.adamw(
                learning_rate=learning_rate,
                weight_decay=0.05,
                b1=0.9,
                b2=0.95,
                mask=get_weight_decay_mask,
            ),
        ),
    )


class _FixedUniform:
    """Stands in for `jax.random.uniform` in the reference's `random_masking`.

    Returns the given rows in call order (image first, then text).
    """

    def __init__(self, *rows):
        self.rows = list(rows)

    def __call__(self, rng, shape, dtype=None, *args, **kwargs):
        import jax.numpy as jnp

        row = self.rows.pop(0)
        assert row.shape == tuple(shape), (row.shape, shape)
        return jnp.asarray(row, dtype=jnp.float32)


def make_m3ae(out, seed=0):
    import cloudpickle
    import jax
    import jax.numpy as jnp
    from m3ae import model as m3ae_model

    updates = dict(
        emb_dim=32, dec_emb_dim=32, depth=2, dec_depth=2, num_heads=4, dec_num_heads=2,
        mlp_ratio=4, use_type_embedding=True,
    )
    config = m3ae_model.MaskedMultimodalAutoencoder.get_default_config(updates)
    model = m3ae_model.MaskedMultimodalAutoencoder(
        config_updates=config, text_vocab_size=VOCAB, image_output_dim=PATCH * PATCH * 3
    )
    patch_dim = PATCH * PATCH * 3
    params = model.init(
        {k: jax.random.PRNGKey(i) for i, k in enumerate(model.rng_keys())},
        jnp.zeros((2, NUM_PATCHES, patch_dim)),
        jnp.zeros((2, TEXT), jnp.int32),
        jnp.zeros((2, TEXT)),
        deterministic=False,
    )
    params = _perturb_flax(params, seed)

    rng = _rng(seed + 1)
    images = _images(seed + 2)
    patches = m3ae_model.extract_patches(jnp.asarray(images), PATCH)
    token_ids = rng.integers(0, VOCAB, size=(BATCH, TEXT)).astype("int32")
    padding = np.zeros((BATCH, TEXT), "float32")  # reference: 1.0 = padding
    padding[1, -5:] = 1.0
    encoder_output = model.apply(
        params, patches, token_ids, padding, deterministic=True,
        method=model.forward_representation,
    )

    masked_ids = rng.integers(0, VOCAB, size=(BATCH, TEXT)).astype("int32")
    image_row = rng.uniform(size=NUM_PATCHES).astype("float32")
    text_row = rng.uniform(size=TEXT).astype("float32")
    original = jax.random.uniform
    jax.random.uniform = _FixedUniform(image_row, text_row)
    try:
        image_out, text_out, image_mask, text_mask = model.apply(
            params, patches, masked_ids, np.zeros((BATCH, TEXT), "float32"),
            deterministic=True, rngs={"noise": jax.random.PRNGKey(0)},
        )
    finally:
        jax.random.uniform = original

    variant = {"seed": 42, "epochs": 1, "batch_size": BATCH, "patch_size": PATCH,
               "discretized_image": False, "image_loss_weight": 1.0,
               "text_loss_weight": 0.1, "weight_decay": 0.05, "load_checkpoint": ""}
    variant.update(_flatten(config, "m3ae"))
    variant.update({"data.image_size": IMAGE, "data.tokenizer_max_length": TEXT,
                    "data.tokenizer": "bert-base-uncased", "data.path": ""})
    state = _train_state(m3ae_model, params, model.no_decay_list())
    with open(os.path.join(out, "m3ae_tiny.pkl"), "wb") as f:
        cloudpickle.dump({"step": 7, "epoch": 1, "variant": variant,
                          "state": jax.device_get(state)}, f)
    np.savez(
        os.path.join(out, "m3ae_tiny.npz"),
        images=images, token_ids=token_ids, padding_mask=padding == 0,
        encoder_output=np.asarray(encoder_output),
        masked_token_ids=masked_ids,
        image_noise=np.tile(image_row, (BATCH, 1)), text_noise=np.tile(text_row, (BATCH, 1)),
        image_predictions=np.asarray(image_out), text_logits=np.asarray(text_out),
        image_mask=np.asarray(image_mask) > 0, text_mask=np.asarray(text_mask) > 0,
    )


def make_reference_mae(out, seed=10):
    import cloudpickle
    import jax
    import jax.numpy as jnp
    from m3ae import model as m3ae_model

    # No type embeddings here, so that path is covered too.
    updates = dict(
        emb_dim=32, dec_emb_dim=32, depth=2, dec_depth=2, num_heads=4, dec_num_heads=2,
        mlp_ratio=4, use_type_embedding=False,
    )
    config = m3ae_model.MaskedAutoencoder.get_default_config(updates)
    model = m3ae_model.MaskedAutoencoder(config_updates=config, image_output_dim=PATCH * PATCH * 3)
    params = model.init(
        {k: jax.random.PRNGKey(i) for i, k in enumerate(model.rng_keys())},
        jnp.zeros((2, NUM_PATCHES, PATCH * PATCH * 3)),
        deterministic=False,
    )
    params = _perturb_flax(params, seed)
    rng = _rng(seed + 1)
    images = _images(seed + 2)
    patches = m3ae_model.extract_patches(jnp.asarray(images), PATCH)
    encoder_output = model.apply(
        params, patches, deterministic=True, method=model.forward_representation
    )
    image_row = rng.uniform(size=NUM_PATCHES).astype("float32")
    original = jax.random.uniform
    jax.random.uniform = _FixedUniform(image_row)
    try:
        image_out, image_mask, _ = model.apply(
            params, patches, deterministic=True, rngs={"noise": jax.random.PRNGKey(0)}
        )
    finally:
        jax.random.uniform = original
    variant = {"seed": 42, "epochs": 1, "batch_size": BATCH, "patch_size": PATCH,
               "discretized_image": False, "dataset": "imagenet", "load_checkpoint": ""}
    variant.update(_flatten(config, "mae"))
    variant.update({"cc12m_data.image_size": 256, "imagenet_data.image_size": IMAGE})
    state = _train_state(m3ae_model, params, model.no_decay_list())
    with open(os.path.join(out, "mae_reference_tiny.pkl"), "wb") as f:
        cloudpickle.dump({"step": 3, "epoch": 0, "variant": variant,
                          "state": jax.device_get(state)}, f)
    np.savez(
        os.path.join(out, "mae_reference_tiny.npz"),
        images=images, encoder_output=np.asarray(encoder_output),
        image_noise=np.tile(image_row, (BATCH, 1)),
        image_predictions=np.asarray(image_out), image_mask=np.asarray(image_mask) > 0,
    )


def make_reference_classifier(out, seed=40, num_classes=5):
    """The reference's fine-tuning model (`finetune_main.py`: `ViTClassifier`).

    `global_pool=True`: mean of the patch tokens of `forward_representation`
    (final encoder LayerNorm included), then LayerNorm, then Dense.
    """
    import cloudpickle
    import jax
    import jax.numpy as jnp
    from m3ae import model as m3ae_model

    updates = dict(emb_dim=32, dec_emb_dim=32, depth=2, dec_depth=2, num_heads=4,
                   dec_num_heads=2, mlp_ratio=4, use_type_embedding=True)
    config = m3ae_model.MaskedAutoencoder.get_default_config(updates)
    model = m3ae_model.ViTClassifier(
        base_model=m3ae_model.MaskedAutoencoder(config_updates=config,
                                                image_output_dim=PATCH * PATCH * 3),
        num_classes=num_classes,
        global_pool=True,
    )
    params = model.init(
        {k: jax.random.PRNGKey(i) for i, k in enumerate(model.rng_keys())},
        jnp.zeros((2, NUM_PATCHES, PATCH * PATCH * 3)),
        deterministic=False,
    )
    params = _perturb_flax(params, seed)
    images = _images(seed + 2)
    patches = m3ae_model.extract_patches(jnp.asarray(images), PATCH)
    logits = model.apply(params, patches, deterministic=True)
    variant = {"seed": 42, "epochs": 90, "batch_size": BATCH, "patch_size": PATCH,
               "discretized_image": False, "global_pool": True, "load_pretrained": ""}
    variant.update(_flatten(config, "mae"))
    variant.update({"train_data.image_size": IMAGE, "val_data.image_size": IMAGE})
    state = _train_state(m3ae_model, params, ["bias"])
    with open(os.path.join(out, "classifier_reference_tiny.pkl"), "wb") as f:
        cloudpickle.dump({"step": 5, "epoch": 1, "variant": variant,
                          "state": jax.device_get(state), "best_val_acc": 0.5}, f)
    np.savez(os.path.join(out, "classifier_reference_tiny.npz"), images=images,
             logits=np.asarray(logits))


# --------------------------------------------------------------------------
# Official MAE (PyTorch).
# --------------------------------------------------------------------------


def _install_timm_stand_in():
    """A `timm.models.vision_transformer` with the layers MAE imports.

    Behaviour of timm 0.3.2: pre-norm block, fused qkv split as
    (3, heads, head_dim), exact GELU MLP, strided-conv patch embedding.
    """
    import torch
    from torch import nn

    class PatchEmbed(nn.Module):
        def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
            super().__init__()
            self.img_size = (img_size, img_size)
            self.patch_size = (patch_size, patch_size)
            self.num_patches = (img_size // patch_size) ** 2
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)

    class Attention(nn.Module):
        def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None):
            super().__init__()
            self.num_heads = num_heads
            self.scale = qk_scale or (dim // num_heads) ** -0.5
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))

    class Mlp(nn.Module):
        def __init__(self, dim, hidden):
            super().__init__()
            self.fc1 = nn.Linear(dim, hidden)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden, dim)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_scale=None,
                     drop=0.0, attn_drop=0.0, drop_path=0.0, act_layer=nn.GELU,
                     norm_layer=nn.LayerNorm):
            super().__init__()
            self.norm1 = norm_layer(dim)
            self.attn = Attention(dim, num_heads, qkv_bias, qk_scale)
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class VisionTransformer(nn.Module):
        # What models_vit.py subclasses; it overrides `forward_features`.
        def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000,
                     embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=False,
                     qk_scale=None, representation_size=None, drop_rate=0.0,
                     attn_drop_rate=0.0, drop_path_rate=0.0, hybrid_backbone=None,
                     norm_layer=nn.LayerNorm):
            super().__init__()
            self.num_features = self.embed_dim = embed_dim
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
            num_patches = self.patch_embed.num_patches
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
            self.pos_drop = nn.Dropout(p=drop_rate)
            self.blocks = nn.ModuleList([
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, norm_layer=norm_layer)
                for _ in range(depth)])
            self.norm = norm_layer(embed_dim)
            self.pre_logits = nn.Identity()
            self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        def forward(self, x):
            return self.head(self.forward_features(x))

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    vit = types.ModuleType("timm.models.vision_transformer")
    vit.PatchEmbed, vit.Block, vit.VisionTransformer = PatchEmbed, Block, VisionTransformer
    timm.models, models.vision_transformer = models, vit
    sys.modules.update({"timm": timm, "timm.models": models,
                        "timm.models.vision_transformer": vit})


def _perturb_torch(model, seed, skip=("pos_embed",)):
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in skip):
                continue
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def save_official_mae(out, seed=20):
    import torch

    _install_timm_stand_in()
    # util/pos_embed.py uses `np.float`, removed in numpy 1.24.
    np.float = float
    import models_mae

    torch.manual_seed(seed)
    from functools import partial

    model = models_mae.MaskedAutoencoderViT(
        img_size=IMAGE, patch_size=PATCH, embed_dim=32, depth=2, num_heads=4,
        decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
    )
    _perturb_torch(model, seed)
    model.eval()
    rng = _rng(seed + 1)
    images = _images(seed + 2)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    noise = torch.from_numpy(rng.uniform(size=(BATCH, NUM_PATCHES)).astype("float32"))
    ordered = torch.arange(NUM_PATCHES, dtype=torch.float32).expand(BATCH, -1).contiguous()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    original = torch.rand
    with torch.no_grad():
        try:
            torch.rand = lambda *a, **k: ordered
            encoder_output, _, _ = model.forward_encoder(x, 0.0)
            torch.rand = lambda *a, **k: noise
            latent, mask, ids_restore = model.forward_encoder(x, 0.75)
            pred = model.forward_decoder(latent, ids_restore)
        finally:
            torch.rand = original

    # A real optimizer state, as main_pretrain.py's checkpoint holds one.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    loss = model(x, mask_ratio=0.75)[0]
    loss.backward()
    optimizer.step()
    args = argparse.Namespace(
        batch_size=BATCH, epochs=800, accum_iter=1, model="mae_vit_tiny_patch8",
        input_size=IMAGE, mask_ratio=0.75, norm_pix_loss=True, weight_decay=0.05,
        lr=None, blr=1.5e-4, min_lr=0.0, warmup_epochs=40, data_path="/datasets/imagenet",
        output_dir="./output_dir", log_dir="./output_dir", device="cuda", seed=0,
        resume="", start_epoch=0, num_workers=10, pin_mem=True, world_size=1,
        local_rank=-1, dist_on_itp=False, dist_url="env://", distributed=False,
    )
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
              "growth_interval": 2000, "_growth_tracker": 0}
    torch.save(
        {"model": weights, "optimizer": optimizer.state_dict(), "epoch": 799,
         "scaler": scaler, "args": args},
        os.path.join(out, "mae_official_tiny.pth"),
    )
    encoder_only = {k: v for k, v in weights.items()
                    if not k.startswith("decoder") and k != "mask_token"}
    torch.save({"model": encoder_only}, os.path.join(out, "mae_official_encoder_tiny.pth"))
    np.savez(
        os.path.join(out, "mae_official_tiny.npz"),
        images=images, encoder_output=encoder_output.numpy(),
        image_noise=noise.numpy(), image_predictions=pred.numpy(), image_mask=mask.numpy() > 0,
    )


def save_official_classifier(out, seed=50, num_classes=5):
    """An official MAE fine-tuned classifier (`models_vit.py`, `global_pool=True`).

    Its position embedding starts as the pretrained checkpoint's fixed
    sin-cos table and, as in timm's fine-tuning, has moved away from it
    (class-token row included).
    """
    import torch
    from functools import partial

    _install_timm_stand_in()
    np.float = float
    import models_vit
    from util.pos_embed import get_2d_sincos_pos_embed

    torch.manual_seed(seed)
    model = models_vit.VisionTransformer(
        global_pool=True, img_size=IMAGE, patch_size=PATCH, embed_dim=32, depth=2,
        num_heads=4, mlp_ratio=4, qkv_bias=True, num_classes=num_classes,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
    ).eval()
    _perturb_torch(model, seed)
    with torch.no_grad():
        model.pos_embed.copy_(torch.from_numpy(
            get_2d_sincos_pos_embed(32, GRID, cls_token=True)).float()[None])
        gen = torch.Generator().manual_seed(seed + 3)
        model.pos_embed.add_(0.05 * torch.randn(model.pos_embed.shape, generator=gen))
    images = _images(seed + 2)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        logits = model(x)
    args = argparse.Namespace(
        batch_size=BATCH, epochs=100, model="vit_tiny_patch8", input_size=IMAGE,
        drop_path=0.1, global_pool=True, nb_classes=num_classes, finetune="mae_tiny.pth",
        layer_decay=0.75, smoothing=0.1, mixup=0.8, cutmix=1.0,
    )
    torch.save({"model": model.state_dict(), "epoch": 99, "args": args},
               os.path.join(out, "classifier_official_tiny.pth"))
    np.savez(os.path.join(out, "classifier_official_tiny.npz"), images=images,
             logits=logits.numpy())


# --------------------------------------------------------------------------
# Hugging Face ViTMAE.
# --------------------------------------------------------------------------


def save_hf_vitmae(out, seed=30):
    import torch
    from transformers import ViTMAEConfig
    from transformers import ViTMAEForPreTraining

    torch.manual_seed(seed)
    config = ViTMAEConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        image_size=IMAGE, patch_size=PATCH, num_channels=3, qkv_bias=True,
        decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
        decoder_intermediate_size=128, mask_ratio=0.75, norm_pix_loss=False,
    )
    model = ViTMAEForPreTraining(config).eval()
    # transformers 5.x's weight initialisation can leave the fixed sin-cos
    # tables at zero (the Hub's files and 4.x have them): fill them the way
    # its own `initialize_weights` does, as a real checkpoint has them.
    from transformers.models.vit_mae import modeling_vit_mae

    with torch.no_grad():
        for table in (model.vit.embeddings.position_embeddings, model.decoder.decoder_pos_embed):
            pos = modeling_vit_mae.build_2d_sinusoidal_position_embedding(
                GRID, GRID, embed_dim=table.shape[-1], cls_token=True
            )
            half = pos.shape[-1] // 2
            table.copy_(torch.cat([pos[..., half:], pos[..., :half]], dim=-1)[None])
    _perturb_torch(model, seed, skip=("position_embeddings", "pos_embed"))
    rng = _rng(seed + 1)
    images = _images(seed + 2)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    noise = torch.from_numpy(rng.uniform(size=(BATCH, NUM_PATCHES)).astype("float32"))
    ordered = torch.arange(NUM_PATCHES, dtype=torch.float32).expand(BATCH, -1).contiguous()
    with torch.no_grad():
        model.config.mask_ratio = 0.0
        encoder_output = model.vit(pixel_values=x, noise=ordered).last_hidden_state
        model.config.mask_ratio = 0.75
        result = model(pixel_values=x, noise=noise)
    directory = os.path.join(out, "vitmae_hf_tiny")
    model.save_pretrained(directory)
    for name in os.listdir(directory):
        if name not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(directory, name))
    np.savez(
        os.path.join(out, "vitmae_hf_tiny.npz"),
        images=images, encoder_output=encoder_output.numpy(), image_noise=noise.numpy(),
        image_predictions=result.logits.numpy(), image_mask=result.mask.numpy() > 0,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m3ae", required=True, help="checkout of young-geng/m3ae_public")
    parser.add_argument("--mae", required=True, help="checkout of facebookresearch/mae")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.m3ae))
    sys.path.insert(0, os.path.abspath(args.mae))
    os.makedirs(args.out, exist_ok=True)
    make_m3ae(args.out)
    make_reference_mae(args.out)
    make_reference_classifier(args.out)
    save_official_mae(args.out)
    save_official_classifier(args.out)
    save_hf_vitmae(args.out)
    sizes = {n: os.path.getsize(os.path.join(args.out, n)) for n in sorted(os.listdir(args.out))
             if os.path.isfile(os.path.join(args.out, n))}
    print(json.dumps(sizes, indent=1))


if __name__ == "__main__":
    main()
