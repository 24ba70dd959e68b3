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
        results.append(dict(config, accuracy=index / 100, accuracy_mean_pool=index / 50))
    summary = paper_trends.collect(results)
    assert list(summary) == ["probe", "text_mask_ratio", "paired_fraction", "paired_fraction_test"]
    test = summary.pop("paired_fraction_test")
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
    # The paired test: 0.1 minus 0.0 seed by seed, for both poolings.
    differences = [by_key[("m3ae", 0.75, 0.1, s)] - by_key[("m3ae", 0.75, 0.0, s)] for s in (0, 1)]
    assert test["token"]["differences"] == pytest.approx(differences)
    assert test["mean"]["differences"] == pytest.approx([2 * d for d in differences])
    assert test["token"]["seeds"] == [0, 1]


@pytest.mark.backend_independent
def test_quick_gives_the_paired_claim_more_seeds_and_a_paired_test():
    args = paper_trends.parse_args(["--quick", "--experiments", "paired_fraction"])
    assert (args.seeds, args.paired_seeds) == (3, 8)
    configs = paper_trends.configurations(args, vocabulary_size=40, directory="/tmp/x")
    arms = {}
    for c in configs:
        arms.setdefault(c["paired_fraction"], []).append(c["seed"])
    assert {k: sorted(v) for k, v in arms.items()} == {
        0.0: list(range(8)), 0.1: list(range(8)), 1.0: [0, 1, 2]}
    rng = np.random.default_rng(0)
    results = []
    for c in configs:
        # 10 % paired is 0.02 better than none on every seed, whose own
        # level varies by 0.1: the paired test sees it, the spread hides it.
        level = 0.4 + 0.1 * np.sin(c["seed"]) + (0.02 if c["paired_fraction"] == 0.1 else 0)
        results.append(dict(c, accuracy=level + rng.normal(0, 0.001),
                            accuracy_mean_pool=level + rng.normal(0, 0.01)))
    test = paper_trends.paired_test(results)
    assert test["token"]["mean"] == pytest.approx(0.02, abs=0.002)
    assert test["token"]["improved"] == 8 and test["token"]["p_one_sided"] < 1e-6
    assert 0 < test["mean"]["p_one_sided"] < 0.05
    assert paper_trends.parse_args(["--seeds", "4"]).paired_seeds == 4
    # Identical differences have no spread: no t statistic, not a false p.
    same = [dict(r, accuracy=0.5 + (0.02 if r["paired_fraction"] == 0.1 else 0))
            for r in results]
    assert paper_trends.paired_test(same)["token"]["p_one_sided"] is None


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


NEW_KEYS = ["mae_mask_ratio", "decoder_depth", "partial_finetune", "efficient_vs_standard",
            "llrd", "data_fraction"]


def _fake_results(configs):
    """Each run's accuracies and times distinct, from its position."""
    results = []
    for index, config in enumerate(configs):
        finetune = {spec: index / 100 + j / 1000 for j, spec in enumerate(config["finetunes"])}
        results.append(dict(config, accuracy=index / 100, finetune=finetune,
                            pretrain_seconds=10.0 + index, pretrain_steps=config["steps"],
                            step_time_ratio=None if config["budget"] == "steps" else 1.5))
    return results


@pytest.mark.backend_independent
def test_the_mae_experiments_share_runs_and_report_the_issue_keys(tmp_path):
    args = paper_trends.parse_args(["--seeds", "2", "--experiments", "efficient_mae"])
    assert paper_trends.expand("efficient_mae") == NEW_KEYS
    assert paper_trends.expand("probe,llrd,probe") == ["probe", "llrd"]
    with pytest.raises(SystemExit, match="Unknown experiment 'lrd'"):
        paper_trends.parse_args(["--experiments", "lrd"])
    configs = paper_trends.configurations(args, vocabulary_size=None, directory="/tmp/x")
    # Per seed: mask 0.5 / 0.75 / 0.9 (1 block), 0.75 with 4 blocks, the
    # efficient recipe at the standard's wall clock, 20 % of the images.
    assert len(configs) == 2 * 6
    assert [c["seed"] for c in configs] == [0] * 6 + [1] * 6
    by_setting = {(c["image_mask_ratio"], c["decoder_layers"], c["data_fraction"], c["budget"]):
                  c["finetunes"] for c in configs if c["seed"] == 0}
    assert by_setting == {
        (0.5, 1, 1.0, "steps"): [],
        (0.75, 1, 1.0, "steps"): ["1:0.75", "2:0.75", "all:0.75"],
        (0.9, 1, 1.0, "steps"): ["all:0.82", "all:1.0"],
        (0.75, 4, 1.0, "steps"): ["all:0.75"],
        (0.9, 1, 1.0, "time"): ["all:0.82"],
        (0.75, 1, 0.2, "steps"): ["all:0.75"],
    }
    assert all(c["image_size"] == 24 and c["patch_size"] == 4 for c in configs)
    results = _fake_results(configs)
    summary = paper_trends.collect(results, paper_trends.expand("efficient_mae"))
    assert list(summary) == NEW_KEYS + ["efficient_same_wall_clock"]
    assert list(summary["mae_mask_ratio"]) == ["0.5", "0.75", "0.9"]
    assert list(summary["decoder_depth"]) == ["1", "4"]
    assert list(summary["decoder_depth"]["4"]) == ["probe", "seconds"]
    assert list(summary["partial_finetune"]) == ["0", "1", "2", "all"]
    assert list(summary["efficient_vs_standard"]) == ["efficient", "standard"]
    assert list(summary["efficient_vs_standard"]["standard"]) == ["probe", "finetune", "seconds"]
    assert list(summary["llrd"]) == ["on", "off"]
    assert list(summary["data_fraction"]) == ["0.2", "1.0"]

    def run(mask, depth, fraction=1.0, budget="steps"):
        return [r for r in results
                if (r["image_mask_ratio"], r["decoder_layers"], r["data_fraction"], r["budget"])
                == (mask, depth, fraction, budget)]

    baseline, efficient = run(0.75, 1), run(0.9, 1)
    assert summary["mae_mask_ratio"]["0.9"] == [r["accuracy"] for r in efficient]
    assert summary["decoder_depth"]["4"]["seconds"] == [r["pretrain_seconds"] for r in run(0.75, 4)]
    assert summary["partial_finetune"]["2"] == [r["finetune"]["2:0.75"] for r in baseline]
    # 0 blocks is the linear probe (MAE Fig. 9): the run's closed-form probe.
    assert summary["partial_finetune"]["0"] == [r["accuracy"] for r in baseline]
    assert summary["llrd"]["off"] == [r["finetune"]["all:1.0"] for r in efficient]
    assert summary["llrd"]["on"] == summary["efficient_vs_standard"]["efficient"]["finetune"]
    assert summary["data_fraction"]["1.0"] == summary["partial_finetune"]["all"]
    assert summary["data_fraction"]["0.2"] == [r["finetune"]["all:0.75"] for r in run(0.75, 1, 0.2)]
    assert summary["efficient_same_wall_clock"]["step_time_ratio"] == [1.5, 1.5]
    for group in summary.values():
        for _, values in paper_trends._flat(group):
            assert len(values) == 2
    # Partial results keep whole seeds only.
    partial = paper_trends.summarise(results[:8], NEW_KEYS, args, start=0, complete=False,
                                     planned=configs)
    assert partial["partial"] == "8 runs done; seeds [0] complete"
    early = paper_trends.summarise(results[:3], NEW_KEYS, args, start=0, complete=False,
                                   planned=configs)
    assert early["partial"] == "3 runs done; seeds [] complete"
    assert early["llrd"] == {"on": [], "off": []} and len(early["runs"]) == 3
    assert all(len(v) == 1 for _, v in paper_trends._flat(partial["llrd"]))
    summary["chance"] = 0.125
    paper_trends.plot(summary, str(tmp_path / "mae.png"))
    assert (tmp_path / "mae.png").stat().st_size > 10_000


@pytest.mark.slow
def test_one_mae_ablation_run_at_a_toy_size(tmp_path):
    args = paper_trends.parse_args([
        "--experiments", "data_fraction", "--seeds", "1", "--mae_image_size", "8",
        "--mae_patch_size", "4",
        "--probe_examples", "16", "--probe_test_examples", "16", "--pretrain_examples", "40",
        "--hidden_dim", "8", "--num_layers", "2", "--num_heads", "2", "--decoder_dim", "8",
        "--batch_size", "8", "--mae_steps", "2", "--finetune_epochs", "1",
    ])
    paper_trends.make_data(str(tmp_path), args, prefix="mae_", image_size=8)
    configs = paper_trends.configurations(args, None, str(tmp_path))
    assert sorted(c["data_fraction"] for c in configs) == [0.2, 1.0]
    config = [c for c in configs if c["data_fraction"] == 0.2][0]
    assert config["finetunes"] == ["all:0.75"]
    result = paper_trends.run_config(config)
    # 20 % of 40 images is one batch of 8: two steps are two epochs.
    assert result["pretrain_steps"] == 2
    assert 0.0 <= result["accuracy"] <= 1.0
    assert list(result["finetune"]) == ["all:0.75"]
    assert 0.0 <= result["finetune"]["all:0.75"] <= 1.0
    assert result["pretrain_seconds"] > 0 and result["cpu_seconds"] > 0
    assert np.isfinite(result["final_logs"]["loss"])
