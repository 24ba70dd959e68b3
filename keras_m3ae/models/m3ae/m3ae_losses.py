"""Reconstruction losses, computed on masked positions only."""

from keras import ops


def _masked_mean(values, mask):
    mask = ops.cast(mask, "float32")
    return ops.sum(values * mask) / ops.maximum(ops.sum(mask), 1.0)


def normalize_patches(patches, epsilon=1e-6):
    """Normalises each patch by its own mean and std (MAE's norm_pix_loss).

    The variance is unbiased, as `torch.var` computes it in the MAE code.

    Args:
        patches: float `(..., patch_dim)`.
        epsilon: float added to the variance.

    Returns:
        `(normalised, mean, std)`; `normalised * std + mean` gives `patches`
        back, which is how reconstructions of norm-pix models are shown.
    """
    patches = ops.cast(patches, "float32")
    n = patches.shape[-1]
    mean = ops.mean(patches, axis=-1, keepdims=True)
    var = ops.sum(ops.square(patches - mean), axis=-1, keepdims=True) / (n - 1)
    std = ops.sqrt(var + epsilon)
    return (patches - mean) / std, mean, std


def image_reconstruction_loss(predictions, patches, mask, norm_pix_loss=False):
    """Per-patch mean squared error, averaged over masked patches.

    Args:
        predictions: `(B, N, patch_dim)` predicted pixels.
        patches: `(B, N, patch_dim)` target pixels (`patchify(images)`).
        mask: `(B, N)`, 1 where a patch was masked (and its image exists).
        norm_pix_loss: bool. Targets normalised per patch.

    Returns:
        Scalar float32 loss; 0 when nothing is masked.
    """
    targets = normalize_patches(patches)[0] if norm_pix_loss else ops.cast(patches, "float32")
    per_patch = ops.mean(ops.square(ops.cast(predictions, "float32") - targets), axis=-1)
    return _masked_mean(per_patch, mask)


TEXT_LOSS_REDUCTIONS = ("per_example", "per_token")


def _per_example_mean(values, mask):
    """Mean over each example's masked positions, then over the batch.

    An example with nothing masked (no caption) counts as 0 and still
    counts in the batch, as in the reference M3AE code.
    """
    mask = ops.cast(mask, "float32")
    per_example = ops.sum(values * mask, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)
    return ops.mean(per_example)


def token_cross_entropy(logits, token_ids):
    """Cross-entropy of each token, `(B, T)`, from logits `(B, T, vocabulary_size)`.

    log-sum-exp minus the target's logit: the value of the one-hot
    cross-entropy, without building a log-softmax and a one-hot over the
    whole vocabulary.

    Args:
        logits: float `(B, T, vocabulary_size)`.
        token_ids: int `(B, T)` target ids.

    Returns:
        `(B, T)` cross-entropy per token, in the dtype of `logits`.

    Example:
    >>> logits = np.log(np.array([[[0.5, 0.25, 0.25]]], "float32"))
    >>> float(token_cross_entropy(logits, np.array([[0]]))[0, 0])  # -log(0.5)
    0.693...
    """
    target = _target_logits(logits, token_ids)
    return ops.logsumexp(logits, axis=-1) - target


def _target_logits(logits, token_ids):
    """The logit of each target token, `(B, T)`."""
    return ops.take_along_axis(logits, ops.cast(token_ids, "int32")[..., None], axis=-1)[..., 0]


def text_prediction_loss(logits, token_ids, mask, reduction="per_example"):
    """Cross-entropy and accuracy over masked, non-padding tokens.

    A token counts as predicted when its target's logit is the highest. On
    an exact tie for the highest logit a target among the tied tokens counts
    (an argmax would pick only one of them).

    Args:
        logits: `(B, T, vocabulary_size)`.
        token_ids: int `(B, T)` targets.
        mask: `(B, T)`, 1 where a real token was masked.
        reduction: `"per_example"` (the reference M3AE code): average each
            example's masked tokens, then the examples, an example without
            masked tokens counting 0, so every caption weighs the same
            whatever its length. `"per_token"`: average all masked tokens of
            the batch, so long captions weigh more and captionless examples
            not at all. Accuracy is reduced the same way.

    Returns:
        `(loss, accuracy)`, scalar float32; 0 when nothing is masked.
    """
    if reduction not in TEXT_LOSS_REDUCTIONS:
        raise ValueError(
            f"`reduction` must be one of {TEXT_LOSS_REDUCTIONS}; got {reduction!r}."
        )
    reduce = _per_example_mean if reduction == "per_example" else _masked_mean
    logits = ops.cast(logits, "float32")
    token_ids = ops.cast(token_ids, "int32")
    per_token = token_cross_entropy(logits, token_ids)
    # Not `argmax == target`: this max is the one logsumexp takes (XLA
    # computes it once), while an argmax is another pass over the logits,
    # a reduction over (value, index) pairs.
    hits = ops.cast(_target_logits(logits, token_ids) >= ops.max(logits, axis=-1), "float32")
    return reduce(per_token, mask), reduce(hits, mask)
