"""Learning-rate schedules of the MAE / M3AE recipes, in steps or epochs."""

import keras


def scaled_learning_rate(base_learning_rate, batch_size):
    """The papers' linear scaling rule: `base_lr * batch_size / 256`.

    Args:
        base_learning_rate: float. Learning rate quoted for a batch of 256.
        batch_size: int. The effective (global) batch size you train with.

    Returns:
        float.

    Example:
    >>> scaled_learning_rate(1e-3, 1024)
    0.004
    """
    if batch_size is None or batch_size <= 0:
        raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}.")
    return base_learning_rate * batch_size / 256


def warmup_cosine_schedule(
    peak_learning_rate,
    total_steps=None,
    warmup_steps=0,
    *,
    epochs=None,
    warmup_epochs=None,
    steps_per_epoch=None,
    min_learning_rate=0.0,
):
    """Linear warmup from 0 to the peak, then half-cosine decay to the minimum.

    MAE's schedule: `lr = peak * t / warmup` during warmup, then
    `min + (peak - min) * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2`.
    Give lengths in steps (`total_steps`, `warmup_steps`) or in epochs
    (`epochs`, `warmup_epochs` and `steps_per_epoch`); the schedule is
    evaluated per step, so warmup ramps smoothly inside epochs.

    Args:
        peak_learning_rate: float. Learning rate at the end of warmup (already
            scaled for the batch size, see `scaled_learning_rate`).
        total_steps: int. Length of training in optimizer steps.
        warmup_steps: int. Warmup length in steps.
        epochs: int. Length of training in epochs (instead of `total_steps`).
        warmup_epochs: float. Warmup length in epochs.
        steps_per_epoch: int. Needed with `epochs`.
        min_learning_rate: float. Learning rate at the end.

    Returns:
        A `keras.optimizers.schedules.LearningRateSchedule`.

    Example:
    >>> schedule = warmup_cosine_schedule(
    ...     1e-3, epochs=100, warmup_epochs=5, steps_per_epoch=1251)
    >>> float(schedule(0)), float(schedule(5 * 1251))
    (0.0, 0.001)
    """
    if epochs is not None:
        if steps_per_epoch is None:
            raise ValueError("`epochs` needs `steps_per_epoch` to count steps.")
        total_steps = int(round(epochs * steps_per_epoch))
        warmup_steps = int(round((warmup_epochs or 0) * steps_per_epoch))
    if total_steps is None:
        raise ValueError("Give `total_steps`, or `epochs` and `steps_per_epoch`.")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"Warmup ({warmup_steps} steps) must be shorter than training "
            f"({total_steps} steps)."
        )
    alpha = min_learning_rate / peak_learning_rate if peak_learning_rate else 0.0
    if not warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            peak_learning_rate, decay_steps=total_steps, alpha=alpha
        )
    # Keras' CosineDecay ramps from `initial_learning_rate` to `warmup_target`.
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=total_steps - warmup_steps,
        alpha=alpha,
        warmup_target=peak_learning_rate,
        warmup_steps=warmup_steps,
    )
