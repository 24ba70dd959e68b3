"""Long runs: atomic preset writes, the non-finite loss guard, and the pretrain command."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_backbone
from conftest import tiny_batch
from conftest import tiny_pretrainer
from keras_m3ae.training.callbacks import NonFiniteLossError
from keras_m3ae.training.callbacks import NonFiniteLossGuard
from keras_m3ae.training.callbacks import SavePreset
from keras_m3ae.training.callbacks import SkipCountLogger
from keras_m3ae.training.checkpoints import atomic_directory
from keras_m3ae.training.checkpoints import recover_directory
from keras_m3ae.training.checkpoints import save_preset_atomically

import keras_m3ae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.backend_independent
def test_atomic_directory_keeps_the_old_copy_until_the_new_one_is_complete(tmp_path):
    path = tmp_path / "preset"
    with atomic_directory(str(path)) as tmp:
        open(os.path.join(tmp, "a.txt"), "w").write("one")
    assert os.listdir(path) == ["a.txt"]
    with pytest.raises(RuntimeError):
        with atomic_directory(str(path)) as tmp:
            open(os.path.join(tmp, "a.txt"), "w").write("half")
            raise RuntimeError("interrupted")
    assert (path / "a.txt").read_text() == "one"
    assert sorted(os.listdir(tmp_path)) == ["preset"]

    # Killed (SIGKILL) in the middle of a write: the old copy is intact and
    # the leftover is cleared on the next write or recovery.
    script = (
        "import os, signal, sys\n"
        "from keras_m3ae.training.checkpoints import atomic_directory\n"
        f"with atomic_directory({str(path)!r}) as tmp:\n"
        "    open(os.path.join(tmp, 'a.txt'), 'w').write('partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert (path / "a.txt").read_text() == "one"
    assert ".preset.tmp" in os.listdir(tmp_path)
    recover_directory(str(path))
    assert sorted(os.listdir(tmp_path)) == ["preset"]

    # Killed between the two renames of a swap: the complete backup returns.
    os.rename(path, tmp_path / ".preset.old")
    recover_directory(str(path))
    assert (path / "a.txt").read_text() == "one" and sorted(os.listdir(tmp_path)) == ["preset"]


def test_a_preset_with_non_finite_weights_is_never_written(tmp_path):
    backbone = tiny_backbone()
    path = str(tmp_path / "preset")
    save_preset_atomically(backbone, path)
    good = keras_m3ae.M3AEBackbone.from_preset(path).get_weights()
    variable = backbone.encoder.blocks[0].weights[0]
    variable.assign(np.full(variable.shape, np.nan, "float32"))
    with pytest.raises(ValueError, match="not finite.*last good preset"):
        save_preset_atomically(backbone, path)
    again = keras_m3ae.M3AEBackbone.from_preset(path).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(good, again))


def test_on_several_hosts_every_host_reads_the_weights_and_the_chief_saves_a_copy(
        tmp_path, monkeypatch):
    # Two hosts in one process: `to_numpy` stands for the collective that
    # reads weights sharded over the hosts (the two-process run is
    # tests/test_multihost.py, slow). The preset is written from a copy of
    # the backbone holding what every host read, by the chief alone.
    from keras_m3ae.training import hosts

    backbone = tiny_backbone()
    reads = []
    monkeypatch.setattr(hosts, "process_count", lambda: 2)
    monkeypatch.setattr(hosts, "to_numpy",
                        lambda v: reads.append(v.path) or np.asarray(v.numpy() + 1.0))
    path = str(tmp_path / "preset")
    save_preset_atomically(backbone, path, chief=False)
    assert reads == [v.path for v in backbone.weights] and not os.path.exists(path)
    save_preset_atomically(backbone, path, chief=True)
    saved = keras_m3ae.M3AEBackbone.from_preset(path).get_weights()
    for a, b in zip(saved, backbone.get_weights()):
        np.testing.assert_array_equal(a, b + 1.0)  # what was read, not the local values
    # Non-finite values raise on every host, the chief's preset stays.
    variable = backbone.encoder.blocks[0].weights[0]
    variable.assign(np.full(variable.shape, np.nan, "float32"))
    for chief in (False, True):
        with pytest.raises(ValueError, match="not finite.*last good preset"):
            save_preset_atomically(backbone, path, chief=chief)
    again = keras_m3ae.M3AEBackbone.from_preset(path).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(saved, again))


def test_guard_stops_at_the_first_non_finite_loss_before_the_preset_is_saved(tmp_path):
    pretrainer = tiny_pretrainer()
    pretrainer.compile(optimizer="adam")
    batches = [tiny_batch(4, seed=i) for i in range(6)]
    x = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    x["images"][4 * 4 + 1, 0, 0, 0] = np.nan  # the 5th batch (step 5 of epoch 1)
    path = str(tmp_path / "preset")
    save = SavePreset(pretrainer.backbone, path)
    # Epoch 0 sees only clean data: its preset is the last good one.
    pretrainer.fit({k: v[:16] for k, v in x.items()}, batch_size=4, epochs=1, shuffle=False,
                   callbacks=[NonFiniteLossGuard(), save], verbose=0)
    good = keras_m3ae.M3AEBackbone.from_preset(path).get_weights()
    # NaN in arrays is refused up front; in a stream it reaches the step.
    stream = tf.data.Dataset.from_tensor_slices(x).batch(4)
    with pytest.raises(NonFiniteLossError, match=r"step 5 .*epoch 1, batch 5.*image_loss=nan"):
        pretrainer.fit(stream, epochs=1, callbacks=[NonFiniteLossGuard(), save], verbose=0)
    again = keras_m3ae.M3AEBackbone.from_preset(path).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(good, again))


def test_pretrain_command_exits_non_zero_on_nan_and_keeps_the_preset(tmp_path):
    backbone = tiny_backbone(vocabulary_size=30522, image_size=32, patch_size=8)
    preset = str(tmp_path / "tiny")
    backbone.save_to_preset(preset)
    out = str(tmp_path / "run")
    # The preset a previous, healthy run left behind.
    save_preset_atomically(backbone, os.path.join(out, "preset"))
    weights = os.path.join(out, "preset", "model.weights.h5")
    before = open(weights, "rb").read()
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import pretrain
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit) as stopped:
        pretrain.main(["--preset", preset, "--output_dir", out, "--num_examples", "32",
                       "--batch_size", "16", "--decoder_hidden_dim", "16",
                       "--decoder_num_layers", "1", "--decoder_num_heads", "2",
                       "--warmup_epochs", "0", "--epochs", "2", "--base_learning_rate", "1e30"])
    assert str(stopped.value).startswith("error: Non-finite loss at step 2 ")
    assert open(weights, "rb").read() == before


# Two finite passes over a reader of unknown length: Keras 3.15 warns at the
# end of the first (docs/data.md, "Epochs over a finite reader").
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_skip_counts_are_reported_during_training(tmp_path):
    import io

    from PIL import Image
    from records import serialize_example
    from records import write_records

    from keras_m3ae import data

    def jpeg(value):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (value, value, value)).save(buffer, format="JPEG")
        return buffer.getvalue()

    good = [serialize_example(jpg=jpeg(40 * i), txt=f"caption {i}") for i in range(6)]
    broken = [serialize_example(jpg=b"not an image", txt="x"), serialize_example(jpg=b"", txt="y")]
    path = write_records(tmp_path / "00000.tfrecord", good[:3] + broken + good[3:])
    ds = data.image_text_dataset(str(path), image_size=16, max_text_length=8, batch_size=2,
                                 training=False, vocabulary=None)
    lines = []
    logger = SkipCountLogger(ds.skip_counter, every_steps=1, print_fn=lines.append)
    pretrainer = tiny_pretrainer(tiny_backbone(vocabulary_size=30522))
    pretrainer.compile(optimizer="adam")
    history = pretrainer.fit(ds, epochs=2, callbacks=[logger], verbose=0)
    # The counter counts every read of the data: each epoch's pass skips the
    # two broken records. Before the first epoch Keras' JAX trainer draws one
    # batch from an iterator of its own to build the step; on this 8-record
    # file that iterator's read-ahead reaches both broken records too.
    first, second = history.history["skipped"]
    assert first in (2.0, 4.0) and second - first == 2.0
    counts = ds.skip_counter.counts()
    assert counts["image_missing"] == counts["image_not_decodable"] == second / 2
    # Reported while training ran, only when the counts changed, last with the final counts.
    assert lines and len(lines) == len(set(lines))
    assert all("image_missing" in line and "image_not_decodable" in line for line in lines)
    assert lines[-1].endswith(f"{ {k: v for k, v in counts.items() if v} }")
