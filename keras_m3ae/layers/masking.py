"""Random masking: which tokens the encoder sees (MAE, Section 3)."""

from keras import ops


def num_kept(length, mask_ratio):
    """Number of tokens left visible out of `length` at `mask_ratio`."""
    return int(length * (1 - mask_ratio))


def random_masking(noise, num_keep, num_visible=None):
    """Draws the visible subset of each example's tokens from `noise`.

    Each example's tokens are sorted by its own noise; the first `num_keep`
    go to the encoder. Nothing else in the model knows how the mask was
    drawn: pass the same noise to get the same mask. Because shapes must be
    static, every example sends `num_keep` tokens to the encoder; an example
    may declare fewer of them really visible (`num_visible`), which is how a
    short caption keeps its own share of words. Give tokens that must never
    be visible (padding) a noise larger than any real token's.

    Args:
        noise: float tensor `(batch, length)`; smaller values are kept first.
        num_keep: int. Tokens per example passed to the encoder.
        num_visible: optional int tensor `(batch,)`, at most `num_keep`: how
            many of the kept tokens are visible. Defaults to all of them.

    Returns:
        A tuple `(keep_ids, restore_ids, visible)`:
        `keep_ids` int `(batch, num_keep)`, positions of the kept tokens;
        `restore_ids` int `(batch, length)`, the permutation that puts
        `[kept, removed]` back into the original order;
        `visible` bool `(batch, length)` in original order.

    Example:
    >>> noise = keras.random.uniform((2, 16), seed=0)
    >>> keep_ids, restore_ids, visible = random_masking(noise, 4)
    """
    length = noise.shape[-1]
    shuffle_ids = ops.argsort(noise, axis=-1)
    restore_ids = ops.argsort(shuffle_ids, axis=-1)
    rank = ops.arange(length, dtype="int32")[None, :]
    if num_visible is None:
        visible_sorted = ops.broadcast_to(rank < num_keep, ops.shape(noise))
    else:
        visible_sorted = rank < ops.expand_dims(ops.cast(num_visible, "int32"), -1)
    visible = ops.take_along_axis(visible_sorted, restore_ids, axis=-1)
    return shuffle_ids[:, :num_keep], restore_ids, visible


def gather_tokens(tokens, ids):
    """Picks `tokens[b, ids[b, i]]` for a `(batch, length, dim)` tensor."""
    return ops.take_along_axis(tokens, ops.expand_dims(ids, -1), axis=1)
