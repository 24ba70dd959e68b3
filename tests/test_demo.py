import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_m3ae import __main__ as demo_command
from keras_m3ae import analysis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_entry_point_prints_only_its_own_lines():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user starts it
    result = subprocess.run(
        [sys.executable, "-m", "keras_m3ae", "--help"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m keras_m3ae")
    assert "pretrains a tiny M3AE" in result.stdout and "m3ae_demo_output" in result.stdout
    assert "--tune-cpu-host" in result.stdout
    # No TensorFlow / oneDNN / CUDA / absl lines, nothing at all on stderr.
    assert result.stderr == ""


def test_only_known_tensorflow_messages_are_filtered():
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        "I0000 00:00:1796041146.933937   12600 cudart_stub.cc:31] Could not find cuda drivers on your "
        "machine, GPU will not be used.\n",
        "I0000 00:00:1796041147.028315   12600 cpu_feature_guard.cc:227] This TensorFlow binary is "
        "optimized to use available CPU instructions in performance-critical operations.\n",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with "
        "the appropriate compiler flags.\n",
        "E0000 00:00:1796041158.613966   12600 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
        "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
    ]
    real = [
        "E0000 00:00:1796041158.613966   12600 cuda_driver.cc:152] failed to allocate 80.0G\n",
        "W0000 00:00:1796041158.613966   12600 op_kernel.cc:1828] OP_REQUIRES failed\n",
        "Traceback (most recent call last):\n",
        "ImportError: libcudnn.so.9: cannot open shared object file\n",
        "UserWarning: something the user should see\n",
    ]
    assert all(demo_command.is_known_noise(line) for line in noise)
    assert not any(demo_command.is_known_noise(line) for line in real)


@pytest.mark.backend_independent
def test_shapes_captions_use_an_before_a_vowel_and_the_demo_vocabulary_has_every_word():
    from keras_m3ae import demo
    from keras_m3ae.data import shapes

    rng = np.random.default_rng(0)
    captions = {
        layout: [shapes.render_shape_example(rng, 32, layout, colors=colors)[1]
                 for colors in (("orange", "white"), ("white", "orange"), ("red", "blue"))]
        for layout in ("centered", "grid")
    }
    orange, on_orange, red = captions["centered"]
    assert orange.startswith("an orange ") and orange.endswith(" on a white background")
    assert on_orange.startswith("a white ") and on_orange.endswith(" on an orange background")
    assert red.startswith("a red ") and red.endswith(" on a blue background")
    for caption in captions["grid"]:  # "a small" / "a large"
        assert caption.split()[0] == "a"
    assert captions["grid"][1].endswith(" on an orange background")
    assert shapes.object_mask(np.zeros((32, 32, 3), "uint8"), on_orange).all()  # the background word is read
    words = set(demo.caption_words())
    assert all(set(c.split()) <= words for c in captions["centered"] + captions["grid"])


@pytest.mark.backend_independent  # the demo's own logic; the analysis runs on every backend elsewhere
def test_demo_measures_what_it_shows(tmp_path):
    from keras_m3ae import demo
    from keras_m3ae.data import shapes

    vocabulary = demo.write_vocabulary(tmp_path / "vocabulary.txt")
    evaluation = demo.evaluation_data(str(tmp_path), vocabulary, num_examples=96, seed=4)
    # Read back through the pipeline: captions name the label and the colour,
    # and the object mask covers pixels of the named colour.
    assert len(evaluation["captions"]) == 96
    pixels = np.round(analysis.to_pixels(evaluation["images"]) * 255)
    for i in range(8):
        words = evaluation["captions"][i].split()
        colour = list(shapes.COLORS)[evaluation["colours"][i]]
        assert words[demo.WORD_POSITIONS["shape"]] == shapes.SHAPE_CLASS_NAMES[evaluation["labels"][i]]
        assert words[demo.WORD_POSITIONS["colour"]] == colour
        # JPEG shifts flat colours by up to ~20 levels; the named one is still the nearest.
        inside = np.median(pixels[i][evaluation["object_masks"][i]], axis=0)
        nearest = min(shapes.COLORS, key=lambda name: np.abs(inside - shapes.COLORS[name]).max())
        assert nearest == colour
    assert 0.1 < evaluation["object_masks"].mean() < 0.6
    keras.utils.set_random_seed(0)
    backbone = demo.demo_backbone(len(demo.caption_words()) + 2)
    learned = demo.what_it_learned(backbone, evaluation, num_train=64, attention_examples=16)
    expected = analysis.attention_share(
        analysis.cross_modal_attention(backbone, {k: evaluation[k][:16] for k in ("images", "token_ids",
                                                                               "padding_mask")}),
        analysis.patch_region(evaluation["object_masks"][:16], backbone.grid_size))
    attention = learned["attention"]
    np.testing.assert_allclose(attention["shape"][-1], expected[:, 2].mean(), rtol=1e-6)
    np.testing.assert_allclose(attention["background colour"][-1], expected[:, 5].mean(), rtol=1e-6)
    assert len(attention["colour"]) == backbone.num_layers
    # Probe and neighbours read the CLS features of the held-out part.
    features = learned["features"]
    np.testing.assert_allclose(features[:4], analysis.cls_features(backbone, evaluation["images"][:4]),
                               atol=1e-5)
    labels, colours = evaluation["labels"], evaluation["colours"]
    assert learned["probe"] == analysis.linear_probe_accuracy(features[:64], labels[:64], features[64:],
                                                              labels[64:])
    assert learned["colour_neighbours"] == analysis.neighbour_agreement(features[64:], colours[64:])
    assert learned["shape_neighbours"] == analysis.neighbour_agreement(features[64:], labels[64:])


@pytest.mark.slow  # pretrains a few steps, then measures 3072 held-out images twice (~1-2 min)
def test_demo_runs_end_to_end(tmp_path):
    import json

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "keras_m3ae", "--num_examples", "128", "--epochs", "1",
         "--output_dir", str(out)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "linear probe, shape" in result.stdout
    # Left uncalled at the demo's tiny size, and said so.
    assert "keras_m3ae.tune_cpu_host(): not called" in result.stdout
    for name in ("reconstructions.png", "attention.png", "tsne.png", "tsne_by_colour.png",
                 "tsne_one_colour.png", "preset/config.json"):
        assert (out / name).stat().st_size > 0
    numbers = json.loads((out / "what_it_learned.json").read_text())
    for model in ("pretrained", "random"):
        assert 0.0 < numbers[model]["probe"] <= 1.0
        assert len(numbers[model]["attention"]["shape"]) == 4
