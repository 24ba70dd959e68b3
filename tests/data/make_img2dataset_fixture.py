"""Writes tests/data/img2dataset*/ with the real img2dataset tool, offline.

What it does: generates 13 small source images with numpy/PIL (JPEG RGB of
several sizes and aspect ratios, a PNG, a grayscale JPEG, an RGBA PNG, a
CMYK JPEG, a palette GIF, a 16-bit PNG and a truncated JPEG), serves them with
`http.server` on 127.0.0.1 from a temporary directory, writes a parquet URL
list with captions (accented, mixed case, punctuation, one empty) plus two
URLs that fail (a 404 and a file of HTML text), and runs
`img2dataset.download(..., output_format="tfrecord")` twice:

- `tests/data/img2dataset/`: img2dataset's defaults except a tiny
  `image_size=32`, `resize_mode="keep_ratio"` (the mode docs/data.md
  suggests for CC12M), one process, 4 threads and 8 samples per shard (so the
  output has two shards). Every image is re-encoded to JPEG by the tool.
- `tests/data/img2dataset_raw/`: the same list with
  `disable_all_reencoding=True`, so the `jpg` feature holds the downloaded
  bytes as they are (PNG, GIF, CMYK and truncated JPEG under the name `jpg`).

Both folders keep everything the tool writes: `NNNNN.tfrecord`,
`NNNNN.parquet` (every row of the URL list with its status) and
`NNNNN_stats.json`. `sources.json` next to this script holds the URL list
(url -> caption, kind) for the tests. Record order inside a shard depends on
download completion order, so the tests match records by `url`.

Generated with img2dataset 1.47.0 (tensorflow 2.21, tensorflow-io 0.37.1, whose
import img2dataset's tfrecord writer requires). To rerun, in a virtualenv that
only serves to run img2dataset:

    python -m venv --system-site-packages /tmp/i2d_venv
    /tmp/i2d_venv/bin/pip install img2dataset==1.47.0
    /tmp/i2d_venv/bin/pip install --no-deps tensorflow-io==0.37.1
    /tmp/i2d_venv/bin/python tests/data/make_img2dataset_fixture.py

(tensorflow-io 0.37.1 is built for older TensorFlow: its import warns that its
file system plugins do not load, which the tfrecord writer does not need;
`--no-deps` keeps pip from replacing the installed TensorFlow.)
"""

import functools
import http.server
import io
import json
import os
import shutil
import tempfile
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUTPUTS = {
    "img2dataset": dict(resize_mode="keep_ratio"),
    "img2dataset_raw": dict(disable_all_reencoding=True),
}


def _gradient(height, width, seed):
    """Smooth colour gradients with a rectangle: compresses to a few KB."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None, None]
    x = np.linspace(0, 1, width)[None, :, None]
    low, high, other = (rng.integers(0, 256, 3) for _ in range(3))
    pixels = low + (high - low) * (0.6 * x + 0.4 * y)
    top, left = height // 4, width // 3
    pixels[top:top + height // 3, left:left + width // 3] = other
    return pixels.clip(0, 255).astype(np.uint8)


def _encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def source_files():
    """(file name, bytes, caption, kind) of every URL of the list."""
    rgb = lambda h, w, s: Image.fromarray(_gradient(h, w, s))  # noqa: E731
    full_jpeg = _encode(rgb(56, 72, 12), "JPEG", quality=90)
    wide16 = (_gradient(40, 60, 11).astype(np.uint16)[..., 0] * 257)
    rows = [
        ("landscape.jpg", _encode(rgb(48, 64, 0), "JPEG", quality=90),
         "Café au lait on a wooden table", "jpeg"),
        ("portrait.jpg", _encode(rgb(80, 40, 1), "JPEG", quality=90),
         "A TALL Portrait of a Lighthouse", "jpeg"),
        ("panorama.jpg", _encode(rgb(36, 120, 2), "JPEG", quality=90),
         "panorama: sea, sky & sand!", "jpeg"),
        ("square.jpg", _encode(rgb(64, 64, 3), "JPEG", quality=90),
         "", "jpeg"),
        ("tiny.jpg", _encode(rgb(20, 24, 4), "JPEG", quality=90),
         "Tiny thumbnail (20x24), upscaled", "jpeg, smaller than image_size"),
        ("photo.png", _encode(rgb(50, 70, 5), "PNG"),
         "A PNG diagram of the Naïve Bayes classifier", "png"),
        ("gray.jpg", _encode(rgb(60, 45, 6).convert("L"), "JPEG", quality=90),
         "Black-and-white photo, 1950s", "grayscale jpeg"),
        ("logo_rgba.png", _encode(
            Image.fromarray(np.dstack([_gradient(40, 40, 7),
                                       np.tile(np.linspace(0, 255, 40, dtype=np.uint8),
                                               (40, 1))])), "PNG"),
         "Transparent logo; résumé icon", "rgba png"),
        ("print_cmyk.jpg", _encode(rgb(44, 66, 8).convert("CMYK"), "JPEG", quality=90),
         "CMYK print scan of São Paulo", "cmyk jpeg"),
        ("palette.gif", _encode(rgb(30, 50, 9).convert("P"), "GIF"),
         "An animated-style GIF? No, a single frame.", "gif"),
        ("deep16.png", _encode(Image.fromarray(wide16), "PNG"),
         "Sixteen-bit grayscale PNG", "16-bit grayscale png"),
        ("truncated.jpg", full_jpeg[: len(full_jpeg) * 2 // 3],
         "A truncated download", "jpeg cut at 2/3"),
        ("mixed_case.jpg", _encode(rgb(45, 60, 10), "JPEG", quality=90),
         "MiXeD CaSe, UPPER and lower -- with \"quotes\"", "jpeg"),
        # The two that must fail: no such file (404), and text served as .jpg.
        ("missing.jpg", None, "This URL returns 404", "404"),
        ("not_an_image.jpg", b"<html><body>Not an image</body></html>\n",
         "HTML instead of an image", "not an image"),
    ]
    return rows


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def main():
    import img2dataset  # only this script needs it (see the docstring)

    rows = source_files()
    with tempfile.TemporaryDirectory(prefix="i2d_fixture_") as tmp:
        served = os.path.join(tmp, "served")
        os.makedirs(served)
        for name, content, _, _ in rows:
            if content is not None:
                with open(os.path.join(served, name), "wb") as f:
                    f.write(content)
        handler = functools.partial(_QuietHandler, directory=served)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        urls = [base + name for name, _, _, _ in rows]
        url_list = os.path.join(tmp, "urls.parquet")
        pq.write_table(pa.table({"url": urls, "caption": [r[2] for r in rows]}), url_list)
        try:
            for folder, options in OUTPUTS.items():
                output = os.path.join(HERE, folder)
                shutil.rmtree(output, ignore_errors=True)
                img2dataset.download(
                    url_list=url_list,
                    input_format="parquet",
                    url_col="url",
                    caption_col="caption",
                    output_format="tfrecord",
                    output_folder=output,
                    image_size=32,
                    processes_count=1,
                    thread_count=4,
                    number_sample_per_shard=8,
                    timeout=5,
                    **options,
                )
        finally:
            server.shutdown()
    # The port changes from run to run: the tests compare paths only.
    sources = [{"path": name, "caption": caption, "kind": kind}
               for name, _, caption, kind in rows]
    with open(os.path.join(HERE, "sources.json"), "w", encoding="utf-8") as f:
        json.dump(sources, f, ensure_ascii=False, indent=1)
        f.write("\n")
    for folder in OUTPUTS:
        output = os.path.join(HERE, folder)
        files = sorted(os.listdir(output))
        print(folder, [(n, os.path.getsize(os.path.join(output, n))) for n in files])


if __name__ == "__main__":
    main()
