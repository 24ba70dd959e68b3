import csv
import importlib.util
import os
import re
import sys

import keras
import numpy as np
import pytest

from conftest import tiny_backbone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pretrain_example_trains_saves_and_resumes(tmp_path):
    preset = str(tmp_path / "tiny")
    tiny_backbone(vocabulary_size=30522, image_size=32, patch_size=8).save_to_preset(preset)
    out = str(tmp_path / "run")
    args = ["--preset", preset, "--output_dir", out, "--num_examples", "64", "--batch_size", "16",
            "--decoder_hidden_dim", "16", "--decoder_num_layers", "1", "--decoder_num_heads", "2",
            "--warmup_epochs", "1"]
    pretrain = load_example("pretrain")
    pretrain.main(args + ["--epochs", "1"])
    assert os.path.exists(os.path.join(out, "preset", "model.weights.h5"))
    # Running again for 2 epochs resumes after the finished one: the log
    # gains exactly one more epoch.
    pretrain.main(args + ["--epochs", "2"])
    with open(os.path.join(out, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(np.isfinite(float(r["loss"])) for r in rows)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution is JAX-only")
def test_pretrain_distributions_do_not_reshard_the_per_host_dataset():
    # image_text_dataset shards per host already; Keras's default
    # auto_shard_dataset=True would drop records on several hosts
    # (tests/test_multihost.py shows it).
    pretrain = load_example("pretrain")
    try:
        for kind in ("data", "model"):
            pretrain.set_distribution(kind)
            assert keras.distribution.distribution().auto_shard_dataset is False
    finally:
        keras.distribution.set_distribution(None)


@pytest.mark.parametrize("name", ["linear_probe", "finetune", "ood_detection"])
def test_classification_examples_on_tfds(name, tmp_path, monkeypatch, capsys):
    import tensorflow_datasets as tfds

    preset = str(tmp_path / "tiny")
    tiny_backbone(image_size=16, patch_size=4).save_to_preset(preset)
    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))
    # The examples tune the process (`keras_m3ae.tune_cpu_host`); the test process stays as it is.
    import keras_m3ae
    from keras_m3ae.host_tuning import HostTuning

    not_here = {"xla_flag": "not in tests", "malloc": "not in tests"}
    monkeypatch.setattr(keras_m3ae, "tune_cpu_host", lambda verbose=True: HostTuning(False, False, not_here))
    monkeypatch.setattr(sys, "argv", [name, "--dataset", "cifar10", "--preset", preset,
                                      "--epochs", "1", "--batch_size", "4", "--image_size", "16"])
    with tfds.testing.mock_data(num_examples=8):
        load_example(name).main()
    out = capsys.readouterr().out
    printed = re.findall(r"(?:accuracy|AUROC[^:]*|random init):?\s*([0-9.]+)", out)
    assert printed, out
    assert all(0.0 <= float(v) <= 1.0 for v in printed)
    assert "keras_m3ae.tune_cpu_host():" in out  # says what it did to the process
    # The random-init baseline next to the result.
    if name == "ood_detection":
        assert re.search(r"pretrained encoder: AUROC.*\nrandom init encoder: AUROC", out), out
    else:
        assert re.search(r"accuracy: pretrained [0-9.]+  random init [0-9.]+", out), out


@pytest.mark.backend_independent
def test_examples_reuse_the_demo_preset_and_pretrain_into_it_otherwise(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))
    common = load_example("common")
    monkeypatch.chdir(tmp_path)
    pretrained = []
    monkeypatch.setattr(common, "quick_pretrain",
                        lambda epochs, seed=0: pretrained.append(epochs) or common.DEMO_PRESET)
    args = common.parser("").parse_args([])
    assert common.default_preset(args) == common.DEMO_PRESET
    assert pretrained == [24]  # none there yet: pretrained first, as the demo does
    assert "pretrained first" in capsys.readouterr().out
    os.makedirs(tmp_path / common.DEMO_PRESET)
    assert common.default_preset(args) == common.DEMO_PRESET
    assert pretrained == [24]  # reused
    assert "the demo's, from m3ae_demo_output/preset" in capsys.readouterr().out
    given = common.parser("").parse_args(["--preset", "elsewhere"])
    assert common.default_preset(given) == "elsewhere"
    with pytest.raises(SystemExit, match="Give --preset"):
        common.default_preset(common.parser("").parse_args(["--dataset", "cifar10"]))


@pytest.mark.backend_independent
def test_examples_leave_the_host_tuning_off_for_the_tiny_demo_encoder_unless_asked(
        monkeypatch, capsys):
    import keras_m3ae
    from keras_m3ae.host_tuning import NOT_AT_TINY_SIZE

    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))
    common = load_example("common")
    calls = []
    monkeypatch.setattr(keras_m3ae, "tune_cpu_host",
                        lambda verbose=True: calls.append(verbose) or "tuned")
    common.tune_host(common.parser("").parse_args([]))
    assert calls == [] and NOT_AT_TINY_SIZE in capsys.readouterr().out
    common.tune_host(common.parser("").parse_args(["--tune-cpu-host"]))
    common.tune_host(common.parser("").parse_args(["--dataset", "cifar10"]))
    assert calls == [False, False] and capsys.readouterr().out == "tuned\ntuned\n"
