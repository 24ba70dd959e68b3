"""Pictures of what a pretrained M3AE does: reconstructions, attention."""

import numpy as np
from keras import ops

from keras_m3ae.data.constants import CC12M_MEAN
from keras_m3ae.data.constants import CC12M_STD
from keras_m3ae.layers.patching import patchify
from keras_m3ae.layers.patching import unpatchify
from keras_m3ae.models.m3ae.m3ae_losses import normalize_patches


def to_pixels(images, mean=CC12M_MEAN, std=CC12M_STD):
    """Normalised images -> RGB values in [0, 1] for display."""
    return np.clip(np.asarray(images) * np.asarray(std) + np.asarray(mean), 0.0, 1.0)


def reconstruct(pretrainer, batch, image_noise=None, text_noise=None):
    """Masked and reconstructed images, in the inputs' pixel space.

    Reconstructions of `norm_pix_loss` models are un-normalised with each
    target patch's own mean and std, as the MAE visualisations do.

    Args:
        pretrainer: an `M3AEPretrainer`.
        batch: a batch dict, as for the pretrainer.
        image_noise: optional `(B, num_patches)` noise for the mask.
        text_noise: optional `(B, max_text_length)` noise.

    Returns:
        dict of numpy arrays: `images`, `masked_images` (masked patches
        zeroed), `reconstructions` (predictions with the visible patches
        pasted back), `predictions` (raw, every patch predicted),
        `image_mask` `(B, N)`, and for M3AE `text_mask` and
        `predicted_token_ids` `(B, T)`.

    Example:
    >>> result = keras_m3ae.analysis.reconstruct(pretrainer, batch)
    >>> keras_m3ae.analysis.plot_reconstructions(result, "reconstructions.png")
    """
    backbone = pretrainer.backbone
    backbone.check_inputs(batch)
    outputs = pretrainer(batch, training=False, image_noise=image_noise, text_noise=text_noise)
    patches = patchify(ops.convert_to_tensor(batch["images"], "float32"), backbone.patch_size)
    predictions = ops.cast(outputs["image_predictions"], "float32")
    if pretrainer.norm_pix_loss:
        _, mean, std = normalize_patches(patches)
        predictions = predictions * std + mean
    mask = ops.cast(outputs["image_mask"], "float32")[..., None]
    args = (backbone.patch_size, backbone.grid_size, backbone.num_channels)
    result = {
        "images": ops.convert_to_numpy(batch["images"]),
        "masked_images": unpatchify(patches * (1 - mask), *args),
        "reconstructions": unpatchify(predictions * mask + patches * (1 - mask), *args),
        "predictions": unpatchify(predictions, *args),
        "image_mask": outputs["image_mask"],
    }
    if backbone.has_text:
        result["text_mask"] = outputs["text_mask"]
        result["predicted_token_ids"] = ops.argmax(outputs["text_logits"], axis=-1)
    return {k: np.asarray(ops.convert_to_numpy(v)) for k, v in result.items()}


def plot_reconstructions(result, path=None, captions=None, mean=CC12M_MEAN, std=CC12M_STD, max_rows=6):
    """Draws triplets: original / masked / reconstruction, one row each.

    As in the M3AE figures, the reconstruction shows the visible patches
    pasted back over the predictions.

    Args:
        result: dict from `reconstruct`.
        path: optional file to save the figure to (PNG by extension).
        captions: optional list of strings shown above each row.
        mean: per-channel mean the images were normalised with.
        std: per-channel std the images were normalised with.
        max_rows: int. At most this many examples.

    Returns:
        The matplotlib `Figure`.

    Example:
    >>> result = reconstruct(pretrainer, batch)
    >>> plot_reconstructions(result, "reconstructions.png")
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(len(result["images"]), max_rows)
    fig, axes = plt.subplots(rows, 3, figsize=(6, 2.1 * rows), squeeze=False)
    titles = ("original", "masked", "reconstruction")
    keys = ("images", "masked_images", "reconstructions")
    for r in range(rows):
        for c, key in enumerate(keys):
            image = to_pixels(result[key][r], mean, std)
            if key == "masked_images":
                # Masked patches in grey, so they read as "removed".
                image = np.where(pixel_mask(result["image_mask"][r], image.shape), 0.5, image)
            ax = axes[r, c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
        if captions is not None:
            axes[r, 0].set_ylabel(_wrap(captions[r]), fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def pixel_mask(patch_mask, image_shape):
    """A per-patch mask spread over the pixels of its (square) patches.

    Args:
        patch_mask: `(num_patches,)` bools, row-major over the patch grid.
        image_shape: `(height, width, ...)` of the image.

    Returns:
        bool numpy array `(height, width, 1)`.

    Example:
    >>> pixel_mask([True, False, False, True], (4, 4, 3))[..., 0].astype(int)
    array([[1, 1, 0, 0],
           [1, 1, 0, 0],
           [0, 0, 1, 1],
           [0, 0, 1, 1]])
    """
    patch_mask = np.asarray(patch_mask, bool)
    height, width = image_shape[:2]
    patch = int(round((height * width / patch_mask.shape[0]) ** 0.5))
    grid = patch_mask.reshape(height // patch, width // patch)
    return np.repeat(np.repeat(grid, patch, 0), patch, 1)[..., None]


def _wrap(text, width=28):
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])
