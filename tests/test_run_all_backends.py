"""tests/run_all_backends.py: parallel workers by default, the user's choice otherwise."""

import os

import pytest

import run_all_backends


def _cores(monkeypatch, count):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(count)), raising=False)


@pytest.mark.backend_independent
def test_one_worker_per_core_at_most_four(monkeypatch):
    _cores(monkeypatch, 2)
    assert run_all_backends._worker_args([]) == ["-n", "2", "--dist", "loadfile"]
    assert run_all_backends._worker_args(["tests/test_layers.py", "-x"]) == [
        "-n", "2", "--dist", "loadfile"]
    _cores(monkeypatch, 16)
    assert run_all_backends._worker_args([]) == ["-n", "4", "--dist", "loadfile"]
    _cores(monkeypatch, 1)
    assert run_all_backends._worker_args([]) == []


@pytest.mark.backend_independent
@pytest.mark.parametrize("args", [
    ["-n", "0"], ["-n0"], ["-n", "3"], ["--numprocesses=3"], ["--dist", "load"],
    ["--dist=worksteal"], ["-p", "no:xdist"], ["-pno:xdist"], ["--pdb"], ["-x", "--trace"],
])
def test_the_users_arguments_choose(monkeypatch, args):
    _cores(monkeypatch, 2)
    assert run_all_backends._worker_args(args) == []


@pytest.mark.backend_independent
def test_marker_expression_is_the_last_one_given():
    assert run_all_backends._marker_expression([]) == "not slow and not gpu"
    assert run_all_backends._marker_expression(["-m", "slow", "-mgpu"]) == "gpu"


@pytest.mark.backend_independent
def test_the_count_is_read_from_pytests_summary_line_not_the_last_line():
    lines = [
        "3.20s call     tests/test_classifier.py::test_frozen_weights_do_not_move_during_fit[0]\n",
        "170 passed, 7 skipped, 10 warnings in 258.27s (0:04:18)\n",
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    ]
    assert [run_all_backends._is_summary(line) for line in lines] == [False, True, False]
    assert run_all_backends._is_summary("1 failed, 2 passed, 1 error in 3.00s\n")
    assert run_all_backends._is_summary("no tests ran in 0.01s\n")
    assert run_all_backends._is_summary("12 deselected in 0.50s\n")
