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


def plot_text_to_image_attention(images, maps, words, path=None, example=0, max_words=8):
    """Overlays, for each word of one caption, its attention over the image.

    Args:
        images: normalised images `(B, H, W, 3)` (as fed to the model).
        maps: dict from `cross_modal_attention`.
        words: list of the example's real tokens as strings (e.g. from
            `M3AETokenizer.detokenize` per id).
        path: optional file to save the figure to.
        example: int. Which example of the batch.
        max_words: int. At most this many words.

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = to_pixels(images[example])
    words = list(words)[:max_words]
    fig, axes = plt.subplots(1, len(words) + 1, figsize=(2 * (len(words) + 1), 2.3), squeeze=False)
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("image", fontsize=8)
    height, width = image.shape[:2]
    for i, word in enumerate(words):
        heat = maps["text_to_image"][example, i]
        heat = np.kron(heat / max(heat.max(), 1e-12), np.ones((height // heat.shape[0], width // heat.shape[1])))
        ax = axes[0, i + 1]
        ax.imshow(image)
        ax.imshow(heat, cmap="inferno", alpha=0.6)
        ax.set_title(word, fontsize=8)
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
