"""An independent numpy implementation of the M3AE forward pass (SPEC.md).

Written from the specification, not from the library, and used as the
oracle in tests: each backend must agree with it.
"""

import math

import numpy as np


def sincos_1d(positions, dim):
    out = np.zeros((len(positions), dim))
    for p_index, pos in enumerate(positions):
        for i in range(dim // 2):
            w = 10000.0 ** (-i / (dim / 2))
            out[p_index, i] = math.sin(pos * w)
            out[p_index, dim // 2 + i] = math.cos(pos * w)
    return out


def sincos_2d(grid_h, grid_w, dim):
    rows = []
    for r in range(grid_h):
        for c in range(grid_w):
            rows.append(np.concatenate([sincos_1d([c], dim // 2)[0], sincos_1d([r], dim // 2)[0]]))
    return np.stack(rows)


def patchify(images, p):
    b, h, w, c = images.shape
    out = np.zeros((b, (h // p) * (w // p), p * p * c))
    for bi in range(b):
        k = 0
        for r in range(h // p):
            for col in range(w // p):
                out[bi, k] = images[bi, r * p : (r + 1) * p, col * p : (col + 1) * p, :].reshape(-1)
                k += 1
    return out


def layer_norm(x, gamma, beta, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def block(x, w, prefix, num_heads, valid):
    """Pre-LN ViT block; w maps variable path -> array."""
    b, s, d = x.shape
    hd = d // num_heads
    h = layer_norm(x, w[prefix + "norm1/gamma"], w[prefix + "norm1/beta"])
    qkv = h @ w[prefix + "attention/qkv/kernel"] + w[prefix + "attention/qkv/bias"]
    qkv = qkv.reshape(b, s, 3, num_heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(hd)
    logits = np.where(valid[:, None, None, :], logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    a = np.einsum("bnqk,bknh->bqnh", probs, v).reshape(b, s, d)
    x = x + a @ w[prefix + "attention/proj/kernel"] + w[prefix + "attention/proj/bias"]
    h = layer_norm(x, w[prefix + "norm2/gamma"], w[prefix + "norm2/beta"])
    h = gelu(h @ w[prefix + "fc1/kernel"] + w[prefix + "fc1/bias"])
    return x + h @ w[prefix + "fc2/kernel"] + w[prefix + "fc2/bias"]


def stack(x, w, prefix, num_layers, num_heads, valid):
    for i in range(num_layers):
        x = block(x, w, f"{prefix}block_{i}/", num_heads, valid)
    return layer_norm(x, w[prefix + "norm/gamma"], w[prefix + "norm/beta"])


def encode_all(w, images, token_ids, padding_mask, patch_size, num_layers, num_heads):
    """Backbone forward with every token visible."""
    d = w["cls_token/cls_token"].shape[0]
    b, h, wd, _ = images.shape
    gh, gw = h // patch_size, wd // patch_size
    img = patchify(images, patch_size) @ w["patch_embedding/projection/kernel"]
    img = img + w["patch_embedding/projection/bias"] + sincos_2d(gh, gw, d)
    img = img + w["image_position_type/type_embedding"]
    txt = w["token_embedding/embeddings"][token_ids]
    txt = txt + sincos_1d(range(token_ids.shape[1]), d) + w["text_position_type/type_embedding"]
    cls = np.broadcast_to(w["cls_token/cls_token"], (b, 1, d))
    x = np.concatenate([cls, img, txt], 1)
    valid = np.concatenate([np.ones((b, 1 + gh * gw), bool), padding_mask], 1)
    return stack(x, w, "encoder/", num_layers, num_heads, valid)


def text_masking(noise, pad, ratio, keep):
    """One caption's text masking: (visible token ids, encoder slot ids).

    The encoder's `keep` slots take the real tokens in noise order, then
    padding in noise order; the first `min(int(real * (1 - ratio)), keep)`
    real ones are visible.
    """
    real = np.flatnonzero(pad)
    real_sorted = real[np.argsort(noise[real], kind="stable")]
    n_vis = min(int(len(real) * (1 - ratio)), keep)
    padded = np.flatnonzero(~pad)
    slots = np.concatenate([real_sorted, padded[np.argsort(noise[padded], kind="stable")]])[:keep]
    return real_sorted[:n_vis], slots


def text_mean(values, mask, reduction="per_example"):
    """The text loss's average of `values` `(B, T)` over `mask`.

    "per_example" is the reference M3AE code's: each example's masked mean
    (0 without masked tokens), then the mean of the examples. "per_token":
    one mean over every masked token of the batch.
    """
    if reduction == "per_token":
        return (values * mask).sum() / max(mask.sum(), 1)
    return np.mean([(v * m).sum() / max(m.sum(), 1) for v, m in zip(values, mask)])


def pretrain_losses(w, batch, image_noise, text_noise, cfg):
    """M3AE pretraining losses, following SPEC.md step by step."""
    images, ids, pad = batch["images"], batch["token_ids"], batch["padding_mask"]
    p, heads = cfg["patch_size"], cfg["num_heads"]
    b, n_img = image_noise.shape
    t = ids.shape[1]
    d = w["cls_token/cls_token"].shape[0]
    dd = w["decoder/input_projection/kernel"].shape[1]
    gh = gw = images.shape[1] // p
    keep_i = int(n_img * (1 - cfg["image_mask_ratio"]))
    keep_t = int(t * (1 - cfg["text_mask_ratio"]))

    patches = patchify(images, p)
    img = patches @ w["patch_embedding/projection/kernel"] + w["patch_embedding/projection/bias"]
    img = img + sincos_2d(gh, gw, d) + w["image_position_type/type_embedding"]
    txt = w["token_embedding/embeddings"][ids] + sincos_1d(range(t), d)
    txt = txt + w["text_position_type/type_embedding"]

    enc_tokens, enc_valid, img_vis, txt_vis = [], [], np.zeros((b, n_img), bool), np.zeros((b, t), bool)
    for e in range(b):
        order = np.argsort(image_noise[e], kind="stable")
        kept_i = order[:keep_i]
        img_vis[e, kept_i] = True
        visible_ids, slots = text_masking(text_noise[e], pad[e], cfg["text_mask_ratio"], keep_t)
        txt_vis[e, visible_ids] = True
        seq = [w["cls_token/cls_token"][None]] + [img[e, kept_i], txt[e, slots]]
        enc_tokens.append(np.concatenate(seq, 0))
        enc_valid.append(np.concatenate([[True], np.ones(keep_i, bool), txt_vis[e, slots]]))
    x = stack(np.stack(enc_tokens), w, "encoder/", cfg["num_layers"], heads, np.stack(enc_valid))

    x = x @ w["decoder/input_projection/kernel"] + w["decoder/input_projection/bias"]
    dec = []
    for e in range(b):
        order = np.argsort(image_noise[e], kind="stable")
        full_i = np.tile(w["decoder/image_mask_token"], (n_img, 1))
        full_i[order[:keep_i]] = x[e, 1 : 1 + keep_i]
        full_t = np.tile(w["decoder/text_mask_token"], (t, 1))
        visible_ids, _ = text_masking(text_noise[e], pad[e], cfg["text_mask_ratio"], keep_t)
        full_t[visible_ids] = x[e, 1 + keep_i : 1 + keep_i + len(visible_ids)]
        full_i = full_i + sincos_2d(gh, gw, dd) + w["decoder/image_position_type/type_embedding"]
        full_t = full_t + sincos_1d(range(t), dd) + w["decoder/text_position_type/type_embedding"]
        dec.append(np.concatenate([x[e, :1], full_i, full_t], 0))
    valid = np.concatenate([np.ones((b, 1 + n_img), bool), pad], 1)
    y = stack(np.stack(dec), w, "decoder/transformer/", cfg["decoder_num_layers"], cfg["decoder_num_heads"], valid)
    pred = y[:, 1 : 1 + n_img] @ w["decoder/image_head/kernel"] + w["decoder/image_head/bias"]
    logits = y[:, 1 + n_img :] @ w["decoder/text_head/kernel"] + w["decoder/text_head/bias"]

    img_mask = ~img_vis
    image_loss = (((pred - patches) ** 2).mean(-1) * img_mask).sum() / img_mask.sum()
    txt_mask = pad & ~txt_vis
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, ids[..., None], -1)[..., 0]
    reduction = cfg.get("text_loss_reduction", "per_example")
    text_loss = text_mean(ce, txt_mask, reduction)
    acc = text_mean((logits.argmax(-1) == ids).astype(float), txt_mask, reduction)
    return {
        "image_loss": image_loss,
        "text_loss": text_loss,
        "text_accuracy": acc,
        "loss": cfg["image_loss_weight"] * image_loss + cfg["text_loss_weight"] * text_loss,
        "image_mask": img_mask,
        "text_mask": txt_mask,
    }
