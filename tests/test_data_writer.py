"""Writer round trips (folder + TSV/JSONL, webdataset tar) and the CLI."""

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_m3ae import data
from keras_m3ae.data.__main__ import main

# Pure tf.data / file work: runs once, not once per Keras backend.
pytestmark = pytest.mark.backend_independent


def encode(color, fmt="JPEG", size=(20, 10)):
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def read_records(paths):
    records = []
    for path in paths:
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            feature = tf.train.Example.FromString(raw).features.feature
            records.append({
                name: (value.int64_list.value[0] if value.int64_list.value
                       else value.bytes_list.value[0])
                for name, value in feature.items()
            })
    return records


def make_folder(root):
    images = root / "images"
    images.mkdir()
    files = {"a.jpg": encode((255, 0, 0)), "b.png": encode((0, 255, 0), "PNG"),
             "c.jpg": encode((0, 0, 255), size=(7, 9))}
    for name, raw in files.items():
        (images / name).write_bytes(raw)
    (images / "broken.jpg").write_bytes(b"definitely not a jpeg")
    return images, files


def test_folder_with_tsv_and_jsonl_round_trip(tmp_path):
    images, files = make_folder(tmp_path)
    tsv = tmp_path / "captions.tsv"
    tsv.write_text("file\tcaption\na.jpg\ta red one\nb.png\tGreen\tthing\n"
                   "c.jpg\t\nmissing.jpg\tlost\nbroken.jpg\tbad\n")
    summary = data.write_tfrecords(data.folder_examples(str(images), str(tsv)),
                                   str(tmp_path / "out"), examples_per_shard=2, progress=False)
    assert summary.written == 3 and dict(summary.skipped) == {"missing_file": 1,
                                                               "unreadable_image": 1}
    assert [os.path.basename(p) for p in summary.paths] == ["00000.tfrecord", "00001.tfrecord"]
    records = read_records(summary.paths)
    assert [r["key"] for r in records] == [b"a", b"b", b"c"]
    assert [r["txt"] for r in records] == [b"a red one", b"Green\tthing", b""]
    assert [r["jpg"] for r in records] == [files["a.jpg"], files["b.png"], files["c.jpg"]]
    assert (records[2]["width"], records[2]["height"]) == (7, 9)
    assert all(r["status"] == b"success" for r in records)
    assert "Wrote 3 examples in 2 shard(s)" in str(summary)

    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for row in [
        {"file": "b.png", "caption": "Café"}, {"filename": "a.jpg", "text": "x"}]))
    out = data.write_tfrecords(data.folder_examples(str(images), str(jsonl)),
                               str(tmp_path / "out2"), progress=False)
    assert [r["txt"].decode() for r in read_records(out.paths)] == ["Café", "x"]

    # The reader takes what the writer wrote.
    ds = data.image_text_dataset(str(tmp_path / "out2"), image_size=8, max_text_length=4,
                                 batch_size=2, training=False)
    (batch,) = list(ds.as_numpy_iterator())
    assert batch["token_ids"].tolist() == [[7668, 0, 0, 0], [1060, 0, 0, 0]]
    green = batch["images"][0, 4, 4] * data.CC12M_STD + np.array(data.CC12M_MEAN)
    np.testing.assert_allclose(green * 255, [0, 255, 0], atol=2)


def write_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for name, raw in samples:
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return str(path)


def test_webdataset_tar_round_trip(tmp_path):
    red = encode((255, 0, 0))
    tar = write_tar(tmp_path / "00000.tar", [
        ("000000000.jpg", red), ("000000000.txt", b"a red square"),
        ("000000000.json", json.dumps({"url": "http://x/r.jpg", "key": "000000000",
                                       "status": "success"}).encode()),
        ("000000001.txt", b"caption without image"),
        ("000000002.jpg", encode((0, 0, 255))), ("000000002.txt", b""),
    ])
    summary = data.write_tfrecords(data.webdataset_examples(tar), str(tmp_path / "out"),
                                   progress=False)
    assert summary.written == 2 and dict(summary.skipped) == {"no_image_in_tar": 1}
    records = read_records(summary.paths)
    assert records[0]["jpg"] == red and records[0]["url"] == b"http://x/r.jpg"
    assert records[0]["key"] == b"000000000" and records[0]["txt"] == b"a red square"
    assert records[1]["key"] == b"000000002" and records[1]["txt"] == b""


def test_cli(tmp_path):
    images, _ = make_folder(tmp_path)
    tsv = tmp_path / "captions.tsv"
    tsv.write_text("a.jpg\tone\nb.png\ttwo\nnope.jpg\tthree\n")
    result = subprocess.run(
        [sys.executable, "-m", "keras_m3ae.data", "write", "--images", str(images),
         "--captions", str(tsv), "--output", str(tmp_path / "out"), "--no-progress"],
        capture_output=True, text=True, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Wrote 2 examples in 1 shard(s)" in result.stdout
    assert "missing_file" in result.stdout
    assert len(read_records([str(tmp_path / "out" / "00000.tfrecord")])) == 2

    # The tar path of the same CLI, in process (saves a second interpreter).
    tar = write_tar(tmp_path / "s.tar", [("k.jpg", encode((1, 2, 3))), ("k.txt", b"t")])
    assert main(["write", "--webdataset", tar, "--output", str(tmp_path / "t"),
                 "--no-progress"]) == 0
    assert read_records([str(tmp_path / "t" / "00000.tfrecord")])[0]["txt"] == b"t"
    assert main(["shapes", "--output", str(tmp_path / "s"), "--num-examples", "8",
                 "--num-shards", "2"]) == 0
    assert sorted(os.listdir(tmp_path / "s")) == ["00000.tfrecord", "00001.tfrecord"]


def test_writer_refuses_a_non_empty_directory_and_overwrites_only_when_asked(tmp_path):
    def examples(n):
        return ({"image": encode((10 * i, 0, 0)), "caption": f"c{i}", "key": str(i)}
                for i in range(n))

    out = tmp_path / "out"
    first = data.write_tfrecords(examples(5), str(out), examples_per_shard=1, progress=False)
    assert len(first.paths) == 5
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty.*overwrite"):
        data.write_tfrecords(examples(2), str(out), examples_per_shard=1, progress=False)
    assert len(read_records(first.paths)) == 5  # nothing touched

    # A rerun with fewer examples leaves no stale shard for the reader to mix in.
    second = data.write_tfrecords(examples(2), str(out), examples_per_shard=1, progress=False,
                                  overwrite=True)
    assert sorted(os.listdir(out)) == ["00000.tfrecord", "00001.tfrecord", "notes.txt"]
    assert [r["txt"] for r in read_records(second.paths)] == [b"c0", b"c1"]


def test_an_interrupted_shard_never_has_a_shard_name(tmp_path):
    def examples():
        for i in range(3):
            yield {"image": encode((0, 50 * i, 0)), "caption": str(i), "key": str(i)}
        raise KeyboardInterrupt  # the process is stopped mid-shard

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        data.write_tfrecords(examples(), str(out), examples_per_shard=2, progress=False)
    # The complete shard is in place; the partial one kept its temporary name.
    assert sorted(os.listdir(out)) == [".00001.tfrecord.tmp", "00000.tfrecord"]
    assert len(read_records([str(out / "00000.tfrecord")])) == 2
    assert data.resolve_files(str(out)) == [str(out / "00000.tfrecord")]
    # A rerun with overwrite clears the leftover too.
    data.write_tfrecords(iter([]), str(out), progress=False, overwrite=True)
    assert os.listdir(out) == []


def test_caption_paths_may_not_leave_the_images_folder(tmp_path):
    images, _ = make_folder(tmp_path)
    (tmp_path / "secret.jpg").write_bytes(encode((9, 9, 9)))
    for name in ("../secret.jpg", str(tmp_path / "secret.jpg"), "sub/../../secret.jpg"):
        tsv = tmp_path / "captions.tsv"
        tsv.write_text(f"a.jpg\tfine\n{name}\tescape\n")
        with pytest.raises(ValueError, match=r"captions.tsv:2: .*outside the images folder"):
            data.folder_examples(str(images), str(tsv))
    allowed = list(data.folder_examples(str(images), str(tsv), allow_outside=True))
    assert [e["caption"] for e in allowed] == ["fine", "escape"]


def test_malformed_and_missing_inputs_name_the_problem(tmp_path):
    images, _ = make_folder(tmp_path)
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"file": "a.jpg", "caption": "ok"}\n{"file": "b.png", caption\n')
    with pytest.raises(ValueError, match=r"c.jsonl:2: not a JSON object"):
        data.folder_examples(str(images), str(jsonl))
    jsonl.write_text('{"file": "a.jpg"}\n\n["b.png"]\n')
    with pytest.raises(ValueError, match=r"c.jsonl:3: expected a JSON object"):
        data.folder_examples(str(images), str(jsonl))
    with pytest.raises(FileNotFoundError, match="Captions file not found"):
        data.folder_examples(str(images), str(tmp_path / "nope.tsv"))
    with pytest.raises(FileNotFoundError, match="Images folder not found"):
        data.folder_examples(str(tmp_path / "nope"), str(jsonl))


def test_cli_failures_are_one_line_and_non_zero(tmp_path, capsys):
    images, _ = make_folder(tmp_path)
    tsv = tmp_path / "captions.tsv"
    tsv.write_text("a.jpg\tone\n")
    cases = [
        (["--images", str(tmp_path / "missing"), "--captions", str(tsv)], "Images folder not found"),
        (["--images", str(images), "--captions", str(tmp_path / "none.tsv")],
         "Captions file not found"),
        (["--images", str(images)], "--images needs --captions"),
    ]
    for extra, message in cases:
        assert main(["write", *extra, "--output", str(tmp_path / "o"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    out = tmp_path / "out"
    assert main(["write", "--images", str(images), "--captions", str(tsv), "--output", str(out),
                 "--no-progress"]) == 0
    assert main(["write", "--images", str(images), "--captions", str(tsv), "--output", str(out),
                 "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["write", "--images", str(images), "--captions", str(tsv), "--output", str(out),
                 "--no-progress", "--overwrite"]) == 0
    # Nothing written is a failure too.
    tsv.write_text("missing.jpg\tone\n")
    assert main(["write", "--images", str(images), "--captions", str(tsv), "--output",
                 str(tmp_path / "empty"), "--no-progress"]) == 1
