"""Fixed sine-cosine position tables (MAE and M3AE, Section 3)."""

import numpy as np


def sincos_1d(positions, dim):
    """Sine-cosine table for 1-D positions.

    Channel `i < dim/2` holds `sin(pos * w_i)`, channel `dim/2 + i` holds
    `cos(pos * w_i)`, with `w_i = 10000 ** (-i / (dim / 2))`.

    Args:
        positions: array of positions (any shape; flattened). May be
            fractional, which is how tables are resampled to other sizes.
        dim: int. Number of channels; must be even.

    Returns:
        float32 numpy array `(len(positions), dim)`.

    Example:
    >>> sincos_1d(np.arange(64), 768).shape
    (64, 768)
    """
    if dim % 2:
        raise ValueError(f"A sin-cos table needs an even width; got {dim}.")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    angles = np.outer(np.asarray(positions, np.float64).reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], 1).astype("float32")


def sincos_2d(grid_size, dim, source_grid_size=None):
    """Sine-cosine table for a 2-D grid of patches, numbered row by row.

    The first `dim/2` channels encode the patch's column, the last `dim/2`
    its row, each as a 1-D table of width `dim/2` (as in MAE).

    Args:
        grid_size: `(grid_h, grid_w)`.
        dim: int. Number of channels; must be a multiple of 4.
        source_grid_size: optional `(grid_h, grid_w)` of the grid a model was
            pretrained on. When given, the grid is stretched over the same
            extent (positions become fractional), so a model fine-tuned at
            another image size sees positions in the range it learned.

    Returns:
        float32 numpy array `(grid_h * grid_w, dim)`.

    Example:
    >>> sincos_2d((14, 14), 768).shape
    (196, 768)
    """
    if dim % 4:
        raise ValueError(f"A 2-D sin-cos table needs a width divisible by 4; got {dim}.")
    grid_h, grid_w = grid_size
    rows, cols = np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64)
    if source_grid_size is not None:
        # Centre-aligned resampling, as image resizing does.
        rows = (rows + 0.5) * source_grid_size[0] / grid_h - 0.5
        cols = (cols + 0.5) * source_grid_size[1] / grid_w - 0.5
    rows, cols = np.meshgrid(rows, cols, indexing="ij")
    return np.concatenate([sincos_1d(cols, dim // 2), sincos_1d(rows, dim // 2)], 1)
