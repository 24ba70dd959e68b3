"""Cross-modal attention (M3AE Section 4.4): which patches a word looks at."""

import numpy as np
from keras import ops

from keras_m3ae.analysis.visualization import to_pixels


def cross_modal_attention(backbone, inputs, layer=-1):
    """Attention between text tokens and image patches, averaged over heads.

    Encodes every token (no masking) and reads one block's attention.

    Args:
        backbone: an `M3AEBackbone` with text.
        inputs: a batch dict with `images`, `token_ids`, `padding_mask`.
        layer: int. Which block (default: the last).

    Returns:
        dict of numpy arrays: `text_to_image` `(B, T, grid_h, grid_w)`, the
        attention each token pays to each patch; `image_to_text` `(B, N, T)`,
        the attention each patch pays to each token (zero on padding);
        `cls_to_image` `(B, grid_h, grid_w)`.

    Example:
    >>> maps = cross_modal_attention(backbone, batch)
    >>> maps["text_to_image"][0, 2]   # where the third word looks
    """
    if not backbone.has_text:
        raise ValueError("Cross-modal attention needs a backbone with text (vocabulary_size set).")
    backbone.check_inputs(inputs)
    _, scores = backbone.encode(
        backbone.embed_images(inputs["images"]),
        backbone.embed_text(inputs["token_ids"]),
        text_valid=inputs["padding_mask"],
        return_attention_scores=True,
    )
    scores = ops.convert_to_numpy(ops.mean(scores[layer], axis=1))  # (B, S, S)
    n = backbone.num_patches
    grid = backbone.grid_size
    batch_size = scores.shape[0]
    return {
        "text_to_image": scores[:, 1 + n :, 1 : 1 + n].reshape(batch_size, -1, *grid),
        "image_to_text": scores[:, 1 : 1 + n, 1 + n :],
        "cls_to_image": scores[:, 0, 1 : 1 + n].reshape(batch_size, *grid),
    }


def plot_text_to_image_attention(images, maps, words, path=None, example=0, max_words=8, row_labels=None):
    """Overlays, for each word of one caption, its attention over the image.

    Each word's map is scaled to its own maximum, so the picture shows where
    a word looks, not how much (`attention_share` gives the amounts).

    Args:
        images: normalised images `(B, H, W, 3)` (as fed to the model).
        maps: dict from `cross_modal_attention`, or a list of them (e.g. one
            per block), drawn as rows.
        words: list of the example's real tokens as strings (e.g. from
            `M3AETokenizer.detokenize` per id).
        path: optional file to save the figure to.
        example: int. Which example of the batch.
        max_words: int. At most this many words.
        row_labels: optional list of str, one per row of `maps`.

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [maps] if isinstance(maps, dict) else list(maps)
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"Got {len(rows)} rows of maps but {len(row_labels)} `row_labels`.")
    image = to_pixels(images[example])
    words = list(words)[:max_words]
    fig, axes = plt.subplots(len(rows), len(words) + 1, figsize=(2 * (len(words) + 1), 2.3 * len(rows)),
                             squeeze=False)
    height, width = image.shape[:2]
    for row, row_maps in enumerate(rows):
        axes[row, 0].imshow(image)
        axes[row, 0].set_title("image" if row_labels is None else row_labels[row], fontsize=8)
        for i, word in enumerate(words):
            heat = row_maps["text_to_image"][example, i]
            heat = np.kron(heat / max(heat.max(), 1e-12),
                           np.ones((height // heat.shape[0], width // heat.shape[1])))
            ax = axes[row, i + 1]
            ax.imshow(image)
            ax.imshow(heat, cmap="inferno", alpha=0.6)
            ax.set_title(word, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def patch_region(pixel_mask, grid_size, min_share=0.5):
    """Pools a per-pixel mask to the patches it covers.

    Args:
        pixel_mask: bool `(B, H, W)`, e.g. where an object is.
        grid_size: `(grid_h, grid_w)`, the backbone's `grid_size`.
        min_share: float. A patch is in the region when at least this share
            of its pixels is.

    Returns:
        bool `(B, grid_h, grid_w)`.

    Example:
    >>> region = patch_region(mask, backbone.grid_size)   # (B, 8, 8) from (B, 64, 64)
    """
    pixel_mask = np.asarray(pixel_mask, "float32")
    batch_size, height, width = pixel_mask.shape
    grid_h, grid_w = grid_size
    if height % grid_h or width % grid_w:
        raise ValueError(f"A {height}x{width} mask does not split into a {grid_h}x{grid_w} patch grid.")
    shares = pixel_mask.reshape(batch_size, grid_h, height // grid_h, grid_w, width // grid_w).mean((2, 4))
    return shares >= min_share


def attention_share(maps, region):
    """Share of each token's image attention that falls inside a region.

    A number for what `plot_text_to_image_attention` shows: a word that
    looks at an object puts more of its attention on the object's patches
    than the region's share of the patches, which is what a token spreading
    its attention evenly would put there.

    Args:
        maps: `text_to_image` `(B, T, grid_h, grid_w)` from
            `cross_modal_attention` (or the whole dict).
        region: bool `(B, grid_h, grid_w)`, e.g. from `patch_region`.

    Returns:
        float array `(B, T)` in [0, 1]; compare with
        `region.mean(axis=(1, 2))`.

    Example:
    >>> maps = cross_modal_attention(backbone, batch)
    >>> share = attention_share(maps, patch_region(object_masks, backbone.grid_size))
    >>> share[:, 2].mean()   # the third word's attention on the objects
    """
    maps = np.asarray(maps["text_to_image"] if isinstance(maps, dict) else maps, "float64")
    region = np.asarray(region, bool)
    if maps.ndim != 4 or region.shape != (maps.shape[0], *maps.shape[2:]):
        raise ValueError(f"`region` must be (batch, grid_h, grid_w) = {(maps.shape[0], *maps.shape[2:])} "
                         f"for maps of shape {maps.shape}; got {region.shape}.")
    total = maps.sum(axis=(2, 3))
    inside = (maps * region[:, None]).sum(axis=(2, 3))
    return inside / np.maximum(total, 1e-12)
