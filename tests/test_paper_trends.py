"""The miniature reproduction of M3AE's claims: its data and its report."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_m3ae.data import shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import paper_trends  # noqa: E402


@pytest.mark.backend_independent
def test_centered_shapes_show_what_their_caption_says():
    rng = np.random.default_rng(3)
    for _ in range(20):
        pixels, caption, label = shapes.render_shape_example(rng, 32, layout="centered")
        words = caption.split()
        color, shape, background = words[1], words[2], words[5]
        assert caption == (f"{shapes.article(color)} {color} {shape} on {shapes.article(background)} "
                           f"{background} background")
        assert shape == shapes.SHAPE_CLASS_NAMES[label]
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
        # The corner is background, the centre the shape (a ring's centre is
        # background too), each within the +-6 noise of its colour.
        corner = pixels[:3, :3].reshape(-1, 3).astype(int)
        assert np.abs(corner - shapes.COLORS[background]).max() <= 6
        if shape != "ring":
            centre = pixels[15:17, 15:17].reshape(-1, 3).astype(int)
            assert np.abs(centre - shapes.COLORS[color]).max() <= 6
    again = shapes.render_shape_example(np.random.default_rng(3), 32, layout="centered")
    first = shapes.render_shape_example(np.random.default_rng(3), 32, layout="centered")
    np.testing.assert_array_equal(again[0], first[0])
    with pytest.raises(ValueError, match="layout"):
        shapes.render_shape_example(rng, 32, layout="random")


@pytest.mark.backend_independent
def test_every_run_is_planned_once_and_reported_in_the_issue_format():
    args = paper_trends.parse_args(["--seeds", "2"])
    configs = paper_trends.configurations(args, vocabulary_size=40, directory="/tmp/x")
    # Per seed: random, MAE, M3AE at 4 text mask ratios and 3 paired
    # fractions, where (0.75, 1.0) is one run shared by three rows.
    assert len(configs) == 2 * (2 + 4 + 2)
    results = []
    for index, config in enumerate(configs):
        results.append(dict(config, accuracy=index / 100))
    summary = paper_trends.collect(results)
    assert list(summary) == ["probe", "text_mask_ratio", "paired_fraction"]
    assert list(summary["text_mask_ratio"]) == ["0.15", "0.5", "0.75", "0.9"]
    assert list(summary["paired_fraction"]) == ["0.0", "0.1", "1.0"]
    shared = summary["probe"]["m3ae"]
    assert shared == summary["text_mask_ratio"]["0.75"] == summary["paired_fraction"]["1.0"]
    for group in summary.values():
        for values in group.values():
            assert len(values) == 2 and len(set(values)) == 2
    by_key = {(r["kind"], r.get("text_mask_ratio"), r.get("paired_fraction"), r["seed"]):
              r["accuracy"] for r in results}
    assert summary["paired_fraction"]["0.1"] == [by_key[("m3ae", 0.75, 0.1, s)] for s in (0, 1)]
    assert summary["probe"]["random"] == [by_key[("random", None, None, s)] for s in (0, 1)]


@pytest.mark.slow
def test_the_script_runs_end_to_end_and_writes_its_json(tmp_path):
    path = tmp_path / "trends.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "paper_trends.py"), "--seeds", "1",
         "--steps", "2", "--workers", "2", "--pretrain_examples", "256", "--probe_examples", "64",
         "--probe_test_examples", "64", "--batch_size", "32", "--json", str(path),
         "--plot", str(tmp_path / "trends.png")],
        check=True, env=env, cwd=str(tmp_path), timeout=600,
    )
    summary = json.loads(path.read_text())
    assert summary["chance"] == 0.125
    assert all(0.0 <= v <= 1.0 for v in summary["probe"]["random"])
    assert len(summary["text_mask_ratio"]["0.9"]) == 1
    assert (tmp_path / "trends.png").stat().st_size > 10_000
