"""The named recipes (`keras_m3ae.recipes`) and the examples' `--recipe` flag."""

import dataclasses
import os
import sys

import keras
import numpy as np
import pytest

import keras_m3ae
from keras_m3ae import recipes
from keras_m3ae.optimizers import learning_rate_multipliers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
import finetune  # noqa: E402
import pretrain  # noqa: E402


@pytest.mark.backend_independent
def test_the_recipes_carry_the_papers_numbers_and_their_sources():
    efficient = keras_m3ae.recipes.get("efficient")
    standard = recipes.get("standard")
    # Efficient MAE Table 1a / 1b.
    assert (efficient.pretrain.image_mask_ratio, efficient.pretrain.decoder_num_layers) == (0.9, 1)
    assert (efficient.pretrain.epochs, efficient.pretrain.warmup_epochs) == (100, 5)
    assert efficient.pretrain.batch_size == 1024
    assert efficient.fine_tune.layer_decay == 0.82
    assert efficient.fine_tune.base_learning_rate == 1e-3
    # MAE Tables 1, 7 and 8.
    assert (standard.pretrain.image_mask_ratio, standard.pretrain.decoder_num_layers) == (0.75, 8)
    assert (standard.pretrain.epochs, standard.pretrain.warmup_epochs) == (1600, 40)
    assert standard.pretrain.batch_size == 4096
    assert standard.fine_tune.layer_decay == 0.75
    for recipe in (standard, efficient):
        assert recipe.pretrain.base_learning_rate == 1.5e-4
        assert (recipe.pretrain.beta_1, recipe.pretrain.beta_2) == (0.9, 0.95)
        assert recipe.pretrain.weight_decay == recipe.fine_tune.weight_decay == 0.05
        # Every field names the table it comes from.
        for part in ("pretrain", "fine_tune"):
            for field in dataclasses.fields(getattr(recipe, part)):
                assert "Table" in recipe.source(f"{part}.{field.name}")
    assert "Efficient MAE Table 1b" in efficient.source("fine_tune.layer_decay")
    assert recipes.names() == ("standard", "efficient")
    assert recipes.get(efficient) is efficient
    with pytest.raises(dataclasses.FrozenInstanceError):
        efficient.pretrain.image_mask_ratio = 0.5
    with pytest.raises(ValueError, match="Unknown recipe 'fast'"):
        recipes.get("fast")
    with pytest.raises(KeyError, match="No source"):
        efficient.source("pretrain.colour")


@pytest.mark.backend_independent
def test_pretrain_flag_sets_the_efficient_recipe_and_explicit_flags_win():
    today = pretrain.parse_args([])
    standard = pretrain.parse_args(["--recipe", "standard"])
    assert vars(standard) == vars(today)
    assert (today.image_mask_ratio, today.decoder_num_layers, today.epochs) == (0.75, 8, 50)
    efficient = pretrain.parse_args(["--recipe", "efficient"])
    assert (efficient.image_mask_ratio, efficient.decoder_num_layers) == (0.9, 1)
    # 100 of 1600 epochs: 1/16 of the example's 50, with 5 % of it as warmup.
    assert efficient.epochs == 3
    assert efficient.warmup_epochs == pytest.approx(0.15)
    changed = {k for k in vars(today) if vars(today)[k] != vars(efficient)[k]}
    assert changed == {"recipe", "image_mask_ratio", "decoder_num_layers", "epochs",
                       "warmup_epochs"}
    mine = pretrain.parse_args(["--recipe", "efficient", "--decoder_num_layers", "2",
                                "--epochs", "7"])
    assert (mine.image_mask_ratio, mine.decoder_num_layers, mine.epochs) == (0.9, 2, 7)
    with pytest.raises(SystemExit):
        pretrain.parse_args(["--recipe", "fast"])


class _Stop(Exception):
    pass


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "argv, layer_decay",
    [([], 0.75), (["--recipe", "efficient"], 0.82),
     (["--recipe", "efficient", "--layer_decay", "0.9"], 0.9)],
)
def test_finetune_flag_sets_the_layer_decay(monkeypatch, argv, layer_decay):
    seen = {}

    class Classifier:
        @classmethod
        def from_preset(cls, preset, **kwargs):
            return cls()

        def compile(self, **kwargs):
            seen.update(kwargs)
            raise _Stop

    labels = np.zeros(4, "int32")
    data = (np.zeros((4, 8, 8, 3), "float32"), labels)
    monkeypatch.setattr(finetune, "load_default", lambda n, seed: ({"labels": labels}, data, data))
    monkeypatch.setattr(finetune, "default_preset", lambda args: "preset")
    monkeypatch.setattr(finetune, "tune_host", lambda args: None)  # process-wide: not in a test
    monkeypatch.setattr(finetune, "M3AEImageClassifier", Classifier)
    monkeypatch.setattr(sys, "argv", ["finetune.py"] + argv)
    with pytest.raises(_Stop):
        finetune.main()
    assert seen["layer_decay"] == layer_decay


def _backbone():
    return keras_m3ae.M3AEBackbone(
        image_size=16, patch_size=4, vocabulary_size=None, hidden_dim=16, num_layers=2,
        num_heads=2,
    )


def test_the_efficient_pretrainer_masks_nine_tenths_with_one_decoder_block():
    recipe = recipes.get("efficient")
    pretrainer = keras_m3ae.M3AEPretrainer(
        _backbone(), decoder_hidden_dim=8, decoder_num_heads=2, **recipe.pretrainer_kwargs()
    )
    assert pretrainer.image_mask_ratio == 0.9
    assert pretrainer.decoder_num_layers == 1
    assert len(pretrainer.decoder.transformer.blocks) == 1
    assert pretrainer.num_image_kept == 1  # int(16 * 0.1)
    standard = keras_m3ae.M3AEPretrainer(
        _backbone(), decoder_hidden_dim=8, decoder_num_heads=2,
        **recipes.get("standard").pretrainer_kwargs()
    )
    assert len(standard.decoder.transformer.blocks) == 8 and standard.num_image_kept == 4
    # The optimizer: the recipe's base rate scaled to the batch, warmup + cosine.
    optimizer = recipe.pretrain_optimizer(batch_size=64, steps_per_epoch=20, epochs=10)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.weight_decay) == (0.9, 0.95, 0.05)
    schedule = optimizer._learning_rate
    assert float(schedule(0)) == 0.0
    # Warmup: 5 of 100 epochs -> 0.5 of 10 epochs = 10 steps, peak 1.5e-4 * 64 / 256.
    assert float(schedule(10)) == pytest.approx(1.5e-4 * 64 / 256)
    assert float(schedule(5)) == pytest.approx(1.5e-4 * 64 / 256 / 2)


def test_the_efficient_fine_tune_optimizer_has_its_layer_decay():
    recipe = recipes.get("efficient")
    classifier = keras_m3ae.M3AEImageClassifier(_backbone(), num_classes=3, compile=False)
    classifier.compile(batch_size=8, epochs=2, steps_per_epoch=1,
                       **recipe.fine_tune_compile_kwargs())
    classifier.fit(np.zeros((8, 16, 16, 3), "float32"), np.arange(8) % 3, batch_size=8,
                   epochs=1, verbose=0)
    multipliers = learning_rate_multipliers(classifier.optimizer)
    # Two blocks: the head and final norm at 1, block 2 at 0.82, block 1 at
    # 0.82^2, the embeddings at 0.82^3.
    values = sorted(set(round(m, 6) for m in multipliers.values()))
    assert values == [round(0.82**3, 6), round(0.82**2, 6), 0.82, 1.0]
    patch = [m for path, m in multipliers.items() if "patch" in path]
    assert patch and all(m == pytest.approx(0.82**3) for m in patch)
    assert keras.ops.convert_to_numpy(classifier.optimizer.weight_decay) == pytest.approx(0.05)
