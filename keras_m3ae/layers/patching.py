"""Cutting images into patches and putting them back."""

from keras import ops


def patchify(images, patch_size):
    """Cuts images into non-overlapping, flattened square patches.

    Patches are numbered row by row; inside a patch, values are flattened in
    (pixel row, pixel column, channel) order, the layout of the reference
    M3AE and MAE code, so a Dense patch embedding converts without reordering.

    Args:
        images: tensor `(batch, height, width, channels)`; height and width
            must be multiples of `patch_size`.
        patch_size: int. Side of a square patch in pixels.

    Returns:
        Tensor `(batch, num_patches, patch_size * patch_size * channels)`.

    Example:
    >>> patchify(np.zeros((2, 32, 32, 3)), 8).shape
    (2, 16, 192)
    """
    height, width, channels = images.shape[1:]
    grid_h, grid_w = height // patch_size, width // patch_size
    x = ops.reshape(
        images, (-1, grid_h, patch_size, grid_w, patch_size, channels)
    )
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(
        x, (-1, grid_h * grid_w, patch_size * patch_size * channels)
    )


def unpatchify(patches, patch_size, grid_size, num_channels=3):
    """Inverse of `patchify`.

    Args:
        patches: tensor `(batch, grid_h * grid_w, patch_size**2 * channels)`.
        patch_size: int. Side of a square patch in pixels.
        grid_size: `(grid_h, grid_w)`, patches per column and per row.
        num_channels: int. Channels per pixel.

    Returns:
        Tensor `(batch, grid_h * patch_size, grid_w * patch_size, channels)`.

    Example:
    >>> x = np.random.rand(2, 32, 32, 3)
    >>> np.allclose(unpatchify(patchify(x, 8), 8, (4, 4)), x)
    True
    """
    grid_h, grid_w = grid_size
    x = ops.reshape(
        patches, (-1, grid_h, grid_w, patch_size, patch_size, num_channels)
    )
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(
        x, (-1, grid_h * patch_size, grid_w * patch_size, num_channels)
    )
