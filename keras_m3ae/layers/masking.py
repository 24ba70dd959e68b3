"""Random masking: which tokens the encoder sees (MAE, Section 3; M3AE)."""

from keras import ops

# Uniform noise lives in [0, 1): this offset sorts padding after every real
# token, so padding is never kept while a real token is left.
_PADDING_NOISE_OFFSET = 2.0


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


def random_text_masking(noise, padding_mask, mask_ratio, num_keep):
    """Draws the visible subset of each caption's real tokens from `noise`.

    The mask ratio applies to each caption's own real tokens, not to the
    padded length: a caption with `n` real tokens keeps
    `min(int(n * (1 - mask_ratio)), num_keep)` of them visible. Padding
    sorts after every real token, so it fills the remaining encoder slots
    (declared not visible) and is never chosen over a real token.

    Args:
        noise: float tensor `(batch, length)`, uniform in [0, 1); smaller
            values are kept first.
        padding_mask: bool tensor `(batch, length)`, True for real tokens.
        mask_ratio: float in [0, 1). Fraction of each caption's real tokens
            that is masked.
        num_keep: int. Tokens per example passed to the encoder
            (`num_kept(length, mask_ratio)`).

    Returns:
        `(keep_ids, restore_ids, visible)` as for `random_masking`;
        `visible` is False on padding.

    Example:
    >>> noise = keras.random.uniform((2, 8), seed=0)
    >>> padding_mask = np.arange(8)[None, :] < np.array([[8], [3]])
    >>> keep_ids, restore_ids, visible = random_text_masking(noise, padding_mask, 0.75, 2)
    """
    padding_mask = ops.cast(padding_mask, "bool")
    noise = ops.where(padding_mask, noise, ops.cast(noise, "float32") + _PADDING_NOISE_OFFSET)
    num_real = ops.sum(ops.cast(padding_mask, "float32"), axis=1)
    num_visible = ops.minimum(
        ops.cast(ops.floor(num_real * (1.0 - mask_ratio)), "int32"), num_keep
    )
    return random_masking(noise, num_keep, num_visible)


def gather_tokens(tokens, ids):
    """Picks `tokens[b, ids[b, i]]` for a `(batch, length, dim)` tensor."""
    return ops.take_along_axis(tokens, ops.expand_dims(ids, -1), axis=1)
