"""Named training recipes: the papers' pretraining and fine-tuning numbers.

Two recipes, each a frozen `Recipe` of a `PretrainRecipe` and a
`FineTuneRecipe` whose fields carry the papers' numbers:

- `"standard"`: MAE's (He et al. 2021; Tables 1, 7 and 8, Fig. 5), which
  M3AE keeps for pretraining (M3AE Sec. 4.1, Table 2) and fine-tuning
  (M3AE Table 4).
- `"efficient"`: "Masked Autoencoders are Secretly Efficient Learners"
  (Table 1): mask ratio 0.9, a 1-block decoder, a short schedule (100
  epochs, 5 warmup, batch 1024 instead of 1600, 40 and 4096) and, in
  fine-tuning, a layer-wise learning-rate decay of 0.82 instead of 0.65
  (the value its low-cost search found for 100 epochs at mask ratio 0.9).

Each field's source is in `Recipe.sources`; `docs/recipes.md` lists them.
`get(name)` returns one; its methods give the keyword arguments of
`M3AEPretrainer`, the pretraining optimizer on a warmup + cosine schedule,
and the arguments of `M3AEImageClassifier.compile`.

Example:
>>> recipe = keras_m3ae.recipes.get("efficient")
>>> pretrainer = keras_m3ae.M3AEPretrainer(backbone, **recipe.pretrainer_kwargs())
>>> pretrainer.compile(optimizer=recipe.pretrain_optimizer(batch_size=64, steps_per_epoch=100))
>>> classifier.compile(batch_size=64, epochs=10, steps_per_epoch=100,
...                    **recipe.fine_tune_compile_kwargs())
"""

import dataclasses

__all__ = ["FineTuneRecipe", "PretrainRecipe", "Recipe", "get", "names"]


@dataclasses.dataclass(frozen=True)
class PretrainRecipe:
    """Masked-autoencoder pretraining settings.

    Args:
        image_mask_ratio: float. Fraction of patches masked.
        decoder_num_layers: int. Decoder blocks.
        decoder_hidden_dim: int. Decoder width.
        epochs: int. Pretraining epochs.
        warmup_epochs: int. Linear warmup before the cosine decay.
        batch_size: int. Global batch size the paper used.
        base_learning_rate: float. AdamW rate per 256 examples.
        weight_decay: float. AdamW weight decay.
        beta_1: float. AdamW first-moment decay.
        beta_2: float. AdamW second-moment decay.
    """

    image_mask_ratio: float
    decoder_num_layers: int
    decoder_hidden_dim: int
    epochs: int
    warmup_epochs: int
    batch_size: int
    base_learning_rate: float
    weight_decay: float
    beta_1: float
    beta_2: float


@dataclasses.dataclass(frozen=True)
class FineTuneRecipe:
    """End-to-end fine-tuning settings.

    Args:
        base_learning_rate: float. AdamW rate per 256 examples.
        layer_decay: float. Layer-wise learning-rate decay.
        weight_decay: float. AdamW weight decay.
        epochs: int. Fine-tuning epochs.
        warmup_epochs: int. Linear warmup before the cosine decay.
        batch_size: int. Global batch size the paper used.
        label_smoothing: float.
        drop_path_rate: float. Stochastic depth of the encoder.
    """

    base_learning_rate: float
    layer_decay: float
    weight_decay: float
    epochs: int
    warmup_epochs: int
    batch_size: int
    label_smoothing: float
    drop_path_rate: float


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A named pretraining + fine-tuning recipe.

    Args:
        name: str.
        pretrain: `PretrainRecipe`.
        fine_tune: `FineTuneRecipe`.
        sources: tuple of `(field, citation)` pairs, e.g.
            `("pretrain.image_mask_ratio", "Efficient MAE Table 1a")`.
    """

    name: str
    pretrain: PretrainRecipe
    fine_tune: FineTuneRecipe
    sources: tuple = ()

    def source(self, field):
        """The table a field comes from, e.g. `source("fine_tune.layer_decay")`."""
        found = dict(self.sources)
        if field not in found:
            raise KeyError(f"No source recorded for {field!r}; known: {sorted(found)}.")
        return found[field]

    def pretrainer_kwargs(self):
        """Keyword arguments of `M3AEPretrainer` set by the recipe.

        Returns:
            dict with `image_mask_ratio` and `decoder_num_layers` (the
            decoder width and heads are the architecture's, not changed by
            either recipe).
        """
        return {
            "image_mask_ratio": self.pretrain.image_mask_ratio,
            "decoder_num_layers": self.pretrain.decoder_num_layers,
        }

    def pretrain_optimizer(self, batch_size, steps_per_epoch, epochs=None):
        """The recipe's AdamW on its warmup + cosine schedule.

        Args:
            batch_size: int. Your global batch size; the learning rate is
                `base_learning_rate * batch_size / 256`.
            steps_per_epoch: int. Optimizer steps per epoch.
            epochs: optional int. Your training length (default: the
                recipe's). Warmup is the recipe's share of it (at least one
                step).

        Returns:
            An unbuilt AdamW from `keras_m3ae.optimizers.pretrain_optimizer`.
        """
        from keras_m3ae.optimizers import scaled_learning_rate
        from keras_m3ae.optimizers import warmup_cosine_schedule

        p = self.pretrain
        epochs = p.epochs if epochs is None else epochs
        warmup = epochs * p.warmup_epochs / p.epochs
        schedule = warmup_cosine_schedule(
            scaled_learning_rate(p.base_learning_rate, batch_size),
            epochs=epochs,
            warmup_epochs=max(warmup, 1 / steps_per_epoch),
            steps_per_epoch=steps_per_epoch,
        )
        return _adamw(schedule, p)

    def fine_tune_compile_kwargs(self):
        """Arguments of `M3AEImageClassifier.compile` set by the recipe.

        Returns:
            dict with `base_learning_rate`, `layer_decay`, `weight_decay`,
            `warmup_epochs` and `label_smoothing`. Pass your `batch_size`,
            `epochs` and `steps_per_epoch` beside them.
        """
        f = self.fine_tune
        return {
            "base_learning_rate": f.base_learning_rate,
            "layer_decay": f.layer_decay,
            "weight_decay": f.weight_decay,
            "warmup_epochs": f.warmup_epochs,
            "label_smoothing": f.label_smoothing,
        }

    def example_pretrain_flags(self, epochs):
        """Settings `examples/pretrain.py --recipe` applies, at its scale.

        The example's own defaults are the standard recipe at a demo's
        length (`epochs`); another recipe changes the masking, the decoder
        and the schedule's length relative to the standard one (the
        efficient recipe's 100 of 1600 epochs: 1/16, at least 1), with its
        share of warmup.

        Args:
            epochs: int. The example's standard length.

        Returns:
            dict of argument names to values (empty for `"standard"`).
        """
        if self.name == "standard":
            return {}
        standard = RECIPES["standard"].pretrain
        short = max(1, round(epochs * self.pretrain.epochs / standard.epochs))
        return {
            "image_mask_ratio": self.pretrain.image_mask_ratio,
            "decoder_num_layers": self.pretrain.decoder_num_layers,
            "epochs": short,
            "warmup_epochs": short * self.pretrain.warmup_epochs / self.pretrain.epochs,
        }


def _adamw(schedule, p):
    # `pretrain_optimizer` fixes the betas; both recipes use its (0.9, 0.95).
    from keras_m3ae.optimizers import pretrain_optimizer

    optimizer = pretrain_optimizer(schedule, weight_decay=p.weight_decay)
    if (optimizer.beta_1, optimizer.beta_2) != (p.beta_1, p.beta_2):
        raise ValueError(
            f"The recipe's betas ({p.beta_1}, {p.beta_2}) differ from "
            f"`pretrain_optimizer`'s ({optimizer.beta_1}, {optimizer.beta_2})."
        )
    return optimizer


_STANDARD = Recipe(
    name="standard",
    pretrain=PretrainRecipe(
        image_mask_ratio=0.75,
        decoder_num_layers=8,
        decoder_hidden_dim=512,
        epochs=1600,
        warmup_epochs=40,
        batch_size=4096,
        base_learning_rate=1.5e-4,
        weight_decay=0.05,
        beta_1=0.9,
        beta_2=0.95,
    ),
    fine_tune=FineTuneRecipe(
        base_learning_rate=1e-3,
        layer_decay=0.75,
        weight_decay=0.05,
        epochs=100,
        warmup_epochs=5,
        batch_size=1024,
        label_smoothing=0.1,
        drop_path_rate=0.1,
    ),
    sources=(
        ("pretrain.image_mask_ratio", "MAE Fig. 5 and Table 1; M3AE Sec. 4.1"),
        ("pretrain.decoder_num_layers", "MAE Table 1a (default 8 blocks); M3AE Sec. A.3"),
        ("pretrain.decoder_hidden_dim", "MAE Table 1b (512)"),
        ("pretrain.epochs",
         "MAE Table 3 / Fig. 7 (1600; the ablations use 800; M3AE: 50 on CC12M)"),
        ("pretrain.warmup_epochs", "MAE Table 7"),
        ("pretrain.batch_size", "MAE Table 7"),
        ("pretrain.base_learning_rate", "MAE Table 7; M3AE Table 2"),
        ("pretrain.weight_decay", "MAE Table 7; M3AE Table 2"),
        ("pretrain.beta_1", "MAE Table 7"),
        ("pretrain.beta_2", "MAE Table 7"),
        ("fine_tune.base_learning_rate", "MAE Table 8 (the released ViT-B config: 5e-4)"),
        ("fine_tune.layer_decay", "MAE Table 8 (the released ViT-B config: 0.65)"),
        ("fine_tune.weight_decay", "MAE Table 8"),
        ("fine_tune.epochs", "MAE Table 8 (ViT-B; 50 for L/H)"),
        ("fine_tune.warmup_epochs", "MAE Table 8"),
        ("fine_tune.batch_size", "MAE Table 8"),
        ("fine_tune.label_smoothing", "MAE Table 8"),
        ("fine_tune.drop_path_rate", "MAE Table 8 (B/L)"),
    ),
)

_EFFICIENT = Recipe(
    name="efficient",
    pretrain=dataclasses.replace(
        _STANDARD.pretrain,
        image_mask_ratio=0.9,
        decoder_num_layers=1,
        epochs=100,
        warmup_epochs=5,
        batch_size=1024,
    ),
    fine_tune=dataclasses.replace(_STANDARD.fine_tune, layer_decay=0.82),
    sources=(
        ("pretrain.image_mask_ratio", "Efficient MAE Table 1a (75% or 90%; Table 4: 90%)"),
        ("pretrain.decoder_num_layers", "Efficient MAE Table 1a; Table 10 (1 vs 8: 82.8 vs 82.7)"),
        ("pretrain.decoder_hidden_dim", "Efficient MAE Table 1a (MAE's, unchanged)"),
        ("pretrain.epochs", "Efficient MAE Table 1a (100 or 200; Table 4: 100)"),
        ("pretrain.warmup_epochs", "Efficient MAE Table 1a"),
        ("pretrain.batch_size", "Efficient MAE Table 1a, Table 3"),
        ("pretrain.base_learning_rate", "Efficient MAE Table 1a"),
        ("pretrain.weight_decay", "Efficient MAE Table 1a"),
        ("pretrain.beta_1", "Efficient MAE Table 1a"),
        ("pretrain.beta_2", "Efficient MAE Table 1a"),
        ("fine_tune.base_learning_rate", "Efficient MAE Table 1b, Fig. 5"),
        ("fine_tune.layer_decay", "Efficient MAE Table 1b (0.82 for 100 epochs / 90%), Fig. 3"),
        ("fine_tune.weight_decay", "Efficient MAE Table 1b"),
        ("fine_tune.epochs", "Efficient MAE Table 1b"),
        ("fine_tune.warmup_epochs", "Efficient MAE Table 1b"),
        ("fine_tune.batch_size", "Efficient MAE Table 1b"),
        ("fine_tune.label_smoothing", "Efficient MAE Table 1b"),
        ("fine_tune.drop_path_rate", "Efficient MAE Table 1b"),
    ),
)

RECIPES = {"standard": _STANDARD, "efficient": _EFFICIENT}


def names():
    """The recipes' names: `("standard", "efficient")`."""
    return tuple(RECIPES)


def get(name):
    """The recipe called `name`.

    Args:
        name: `"standard"` or `"efficient"`, or a `Recipe` (returned as is).

    Returns:
        `Recipe`.

    Example:
    >>> keras_m3ae.recipes.get("efficient").pretrain.image_mask_ratio
    0.9
    """
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe {name!r}; choose one of {names()}.")
    return RECIPES[name]
