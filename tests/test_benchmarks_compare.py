"""`benchmarks/compare.py`: its arguments and what it prints (no model is built)."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import compare  # noqa: E402

# Argument parsing and printing only: no Keras backend involved.
pytestmark = pytest.mark.backend_independent


def test_defaults_time_all_three_backends_briefly_at_tiny():
    args = compare.parse_args([])
    assert args.size == "tiny"
    assert args.backend == ["jax", "tensorflow", "torch"]
    assert (args.rounds, args.block_steps) == compare.TIMING["tiny"]
    assert not args.tune_cpu_host and args.reference is None


def test_size_sets_timing_unless_given():
    args = compare.parse_args(["--size", "base", "--backend", "torch", "jax"])
    assert args.backend == ["torch", "jax"]
    assert (args.rounds, args.block_steps) == compare.TIMING["base"]
    args = compare.parse_args(["--size", "base", "--rounds", "7", "--block-steps", "1"])
    assert (args.rounds, args.block_steps) == (7, 1)


@pytest.mark.parametrize("argv", [["--backend", "numpy"], ["--size", "huge"], ["--rounds", "0"],
                                  ["--batch", "0"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(argv)
    assert "error" in capsys.readouterr().err


def _result(times, missing=None):
    return {"backend": "jax", "versions": "keras 3, jax 0", "device": "cpu",
            "tuning": "off", "xla_flags": "", "times": times, "missing": missing or {},
            "about": {}, "machine": "process CPU/wall 1.00"}


def test_ratios_are_peer_time_over_ours_of_fastest_and_median_blocks():
    assert compare.ratios([0.4, 0.2, 0.3], [0.1, 0.2, 0.15]) == pytest.approx((2.0, 2.0))
    args = compare.parse_args([])
    times = {compare.OURS_M3AE: [0.10, 0.12, 0.20], compare.REFERENCE: [0.15, 0.18, 0.30],
             compare.OURS_MAE: [0.05, 0.05, 0.05]}
    missing = {compare.VITMAE: "not installed: it needs transformers"}
    text = "\n".join(compare.report(_result(times, missing), args))
    assert "peer / ours: fastest 1.50x, median 1.50x" in text
    assert f"{compare.VITMAE}" in text and "not installed: it needs transformers" in text
    table = compare.summary([_result(times, missing)])
    assert "| jax | ours M3AE | 0.1000 / 0.1200 s | reference Flax M3AE | 0.1500 / 0.1800 s | " \
           "**1.50x / 1.50x** |" in table
    assert "| jax | ours MAE | 0.0500 / 0.0500 s | transformers ViTMAE | not installed | - |" in table


def test_a_peer_not_given_is_said_so():
    times = {compare.OURS_M3AE: [0.1], compare.OURS_MAE: [0.1]}
    missing = {compare.REFERENCE: "not given (--reference PATH: ...)"}
    table = "\n".join(compare.summary([_result(times, missing)]))
    assert "reference Flax M3AE | not given | - |" in table
