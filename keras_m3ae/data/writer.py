"""Writing image-caption TFRecord shards in the img2dataset schema.

img2dataset (`--output_format tfrecord`) stores one `tf.train.Example` per
image with bytes features `jpg` (the encoded image), `txt` (the caption),
`key`, `url`, `status` and int64 `width`/`height`. Writing the same schema
lets one reader serve downloaded CC12M shards and the user's own data.
Sources: a folder of images plus a TSV/JSONL captions file, or img2dataset
webdataset tar shards (`KEY.jpg`, `KEY.txt`, `KEY.json`).
"""

import collections
import io
import json
import os
import re
import tarfile

import tensorflow as tf
from PIL import Image
from tqdm.auto import tqdm

from keras_m3ae.data import transforms

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
# Shards are `00000.tfrecord`, ...; a shard being written is `.00000.tfrecord.tmp`,
# renamed when complete, so readers (`*.tfrecord`) never see a partial shard.
_SHARD_NAME = re.compile(r"^\.?\d{5}\.tfrecord(\.tmp)?$")


def _bytes_feature(value):
    if isinstance(value, str):
        value = value.encode("utf-8")
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


class ImageSkipped(ValueError):
    """An image the writer does not write; `reason` is its count's name."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


def _header_size(image):
    """`(width, height)` from a JPEG or PNG header, without PIL's size guard; None otherwise."""
    if image[:4] == b"\x89PNG" and len(image) >= 24:
        return int.from_bytes(image[16:20], "big"), int.from_bytes(image[20:24], "big")
    if image[:3] == b"\xff\xd8\xff":
        try:
            height, width, _ = tf.image.extract_jpeg_shape(image).numpy().tolist()
        except tf.errors.InvalidArgumentError:
            return None
        return width, height
    return None


def image_size(image):
    """`(width, height)` of encoded image bytes, checked as the reader checks them.

    The header is read with PIL. An image larger than PIL's decompression
    bomb guard (`PIL.Image.MAX_IMAGE_PIXELS`, about 179 million pixels) is
    still written when it is a JPEG or PNG whose size its bytes can hold:
    the reader decodes only a crop window of it, at reduced scale. One
    whose header declares far more pixels than its bytes can hold
    (`transforms.MAX_JPEG_PIXELS_PER_BYTE`) is refused, as the reader
    would skip it.

    Args:
        image: bytes. An encoded image.

    Returns:
        `(width, height)`.

    Raises:
        ImageSkipped: with `reason` `"unreadable_image"` (not an image PIL
            can read), `"image_too_large"` (over PIL's guard, and not a
            JPEG or PNG) or `"image_corrupt"` (declared size beyond the
            bytes).
    """
    try:
        with Image.open(io.BytesIO(image)) as opened:
            width, height = opened.size
    except Image.DecompressionBombError as error:
        size = _header_size(image)
        if size is None:
            raise ImageSkipped("image_too_large", str(error)) from None
        width, height = size
    except Exception as error:  # noqa: BLE001 - PIL raises many types on bad bytes
        raise ImageSkipped("unreadable_image", f"not a readable image: {error}") from None
    per_byte = (transforms.MAX_PNG_PIXELS_PER_BYTE if image[:4] == b"\x89PNG"
                else transforms.MAX_JPEG_PIXELS_PER_BYTE)
    if width * height > per_byte * len(image):
        raise ImageSkipped(
            "image_corrupt",
            f"the header declares {width}x{height} pixels, far more than {len(image)} bytes "
            "can hold (a decompression bomb)")
    return width, height


def make_example(image, caption, key, url="", width=None, height=None,
                 status="success", extra=None):
    """One `tf.train.Example` in the img2dataset TFRecord schema.

    Args:
        image: bytes. The encoded image, stored as-is under `jpg`.
        caption: str or bytes. Stored under `txt` (may be empty).
        key: str. Example id.
        url: str. Source address, if known.
        width: int or None. Image width (read from the header if None).
        height: int or None. Image height (read from the header if None).
        status: str. img2dataset's download status.
        extra: dict or None. More features: int values become int64
            features, str/bytes values bytes features.

    Returns:
        A `tf.train.Example`.

    Raises:
        ImageSkipped: the image cannot be read or declares an impossible
            size (see `image_size`), when its size is read here.
    """
    if width is None or height is None:
        width, height = image_size(image)
    features = {
        "jpg": _bytes_feature(image),
        "txt": _bytes_feature(caption),
        "key": _bytes_feature(key),
        "url": _bytes_feature(url),
        "width": _int64_feature(width),
        "height": _int64_feature(height),
        "original_width": _int64_feature(width),
        "original_height": _int64_feature(height),
        "status": _bytes_feature(status),
    }
    for name, value in (extra or {}).items():
        if isinstance(value, (str, bytes)):
            features[name] = _bytes_feature(value)
        else:
            features[name] = _int64_feature(value)
    return tf.train.Example(features=tf.train.Features(feature=features))


class WriteSummary:
    """What `write_tfrecords` wrote and skipped.

    Attributes:
        paths: list of str. The shard files written.
        written: int. Examples written.
        skipped: collections.Counter. Reason -> number of sources skipped.
    """

    def __init__(self):
        self.paths = []
        self.written = 0
        self.skipped = collections.Counter()

    def __str__(self):
        lines = [f"Wrote {self.written} examples in {len(self.paths)} shard(s)."]
        if self.paths:
            lines.append(f"  {self.paths[0]} ... {self.paths[-1]}")
        total = sum(self.skipped.values())
        lines.append(f"Skipped {total}" + (f": {dict(self.skipped)}" if total else "."))
        return "\n".join(lines)


def _prepare_output_dir(output_dir, overwrite):
    """Creates `output_dir`; refuses one that holds files unless `overwrite`.

    With `overwrite`, the shards of a previous run (and shards a killed run
    left half-written) are removed first, so no stale shard mixes in; other
    files are left alone.
    """
    tf.io.gfile.makedirs(output_dir)
    present = sorted(tf.io.gfile.listdir(output_dir))
    if not present:
        return
    shards = [name for name in present if _SHARD_NAME.match(name)]
    if not overwrite:
        raise FileExistsError(
            f"Output directory {output_dir!r} is not empty ({len(present)} entries, "
            f"{len(shards)} shards, e.g. {present[0]!r}): pass overwrite=True "
            "(--overwrite) to replace its shards, or choose an empty directory."
        )
    for name in shards:
        tf.io.gfile.remove(os.path.join(output_dir, name))


def write_tfrecords(examples, output_dir, examples_per_shard=10_000, progress=True,
                    total=None, summary=None, overwrite=False):
    """Writes examples into shards `00000.tfrecord`, `00001.tfrecord`, ...

    Each image is opened (header only) to check that it is an image and to
    read its size (`image_size`); unreadable ones (`unreadable_image`) and
    ones whose header declares far more pixels than their bytes hold
    (`image_corrupt`) are skipped and counted, never written.
    A shard is written as `.NNNNN.tfrecord.tmp` and renamed when complete:
    an interrupted run leaves no partial shard under a shard's name.

    Args:
        examples: iterable of dicts with `image` (encoded bytes), `caption`
            (str), `key` (str) and optionally `url` (str), `status` (str)
            and `extra` (dict of more features, e.g. `{"label": 3}`). An
            item may instead be `("skip", reason)` to count a source problem
            found upstream.
        output_dir: str. Directory (created if needed); any gfile path. It
            must be empty unless `overwrite`.
        examples_per_shard: int. Examples per shard file.
        progress: bool. Show a tqdm progress bar.
        total: int or None. Number of items, for the progress bar.
        summary: `WriteSummary` or None. Filled in and returned; pass the
            summary of a previous call to append shards to the same dataset
            (numbering continues, the directory check is skipped).
        overwrite: bool. Remove the shards already in `output_dir` first.

    Returns:
        A `WriteSummary`.

    Raises:
        FileExistsError: `output_dir` is not empty and `overwrite` is False.

    Example:

    >>> summary = write_tfrecords(
    ...     folder_examples("photos/", "captions.tsv"), "/tmp/shards")
    >>> print(summary)
    """
    if examples_per_shard < 1:
        raise ValueError(f"examples_per_shard must be >= 1, got {examples_per_shard}.")
    if summary is None:
        _prepare_output_dir(output_dir, overwrite)
    summary = summary or WriteSummary()
    writer = None
    in_shard = 0
    bar = tqdm(examples, total=total, disable=not progress, unit="img", desc="write")

    def finish_shard():
        writer.close()
        final = summary.paths[-1]
        tf.io.gfile.rename(_temporary(final), final, overwrite=True)

    try:
        for item in bar:
            if isinstance(item, tuple):
                summary.skipped[item[1]] += 1
                continue
            try:
                example = make_example(
                    item["image"], item.get("caption", ""), item["key"], item.get("url", ""),
                    status=item.get("status", "success"), extra=item.get("extra"),
                )
            except ImageSkipped as skipped:
                summary.skipped[skipped.reason] += 1
                continue
            if writer is None or in_shard == examples_per_shard:
                if writer is not None:
                    finish_shard()
                path = os.path.join(output_dir, f"{len(summary.paths):05d}.tfrecord")
                writer = tf.io.TFRecordWriter(_temporary(path))
                summary.paths.append(path)
                in_shard = 0
            writer.write(example.SerializeToString())
            in_shard += 1
            summary.written += 1
            bar.set_postfix(shards=len(summary.paths), skipped=sum(summary.skipped.values()))
        if writer is not None:
            finish_shard()
            writer = None
    finally:
        if writer is not None:  # an error: the partial shard keeps its temporary name
            writer.close()
        bar.close()
    return summary


def _temporary(path):
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.tmp")


def _read_captions(captions_file):
    """(line number, file name, caption) triples from a TSV or JSONL file."""
    if not tf.io.gfile.exists(captions_file):
        raise FileNotFoundError(f"Captions file not found: {captions_file!r}.")
    with tf.io.gfile.GFile(captions_file, "r") as f:
        lines = f.read().splitlines()
    jsonl = captions_file.endswith((".jsonl", ".json")) or (
        lines and lines[0].lstrip().startswith("{")
    )
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{captions_file}:{number}"
        if jsonl:
            try:
                row = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{where}: not a JSON object ({error.msg}): {line[:80]!r}.") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {line[:80]!r}.")
            name = next((row[k] for k in ("file", "filename", "image", "path") if k in row), None)
            caption = next((row[k] for k in ("caption", "text", "txt") if k in row), "")
            if not isinstance(name, str):
                raise ValueError(f"{where}: no 'file' field (a string) in {line[:80]!r}.")
        else:
            name, _, caption = line.partition("\t")
            if number == 1 and name.strip().lower() in ("file", "filename", "image", "path"):
                continue  # a header row
        rows.append((number, name.strip(), str(caption).strip()))
    return rows


def _inside(image_dir, name, where, allow_outside):
    """`image_dir/name`, refusing names that leave `image_dir` unless allowed."""
    path = os.path.join(image_dir, name)
    if allow_outside:
        return path
    root = os.path.realpath(image_dir)
    if os.path.isabs(name) or os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise ValueError(
            f"{where}: {name!r} points outside the images folder {image_dir!r}; "
            "pass allow_outside=True (--allow-outside-images) if that is meant."
        )
    return path


def folder_examples(image_dir, captions_file, allow_outside=False):
    """Examples from a folder of images and a captions file.

    The captions file is TSV (`file name<TAB>caption` per line, an optional
    header) or JSONL (`{"file": ..., "caption": ...}` per line). Listed
    files that do not exist yield `("skip", "missing_file")`. Both files are
    checked before anything is yielded: a missing folder or captions file, a
    malformed line (reported as `file:line`) or a name that leaves
    `image_dir` (absolute, or through `..`) raises at once.

    Args:
        image_dir: str. Folder of the images.
        captions_file: str. TSV or JSONL path.
        allow_outside: bool. Accept names that resolve outside `image_dir`.

    Returns:
        An iterator of example dicts for `write_tfrecords`.

    Raises:
        FileNotFoundError: `image_dir` or `captions_file` does not exist.
        ValueError: a malformed line, or a name outside `image_dir`.
    """
    if not tf.io.gfile.isdir(image_dir):
        raise FileNotFoundError(f"Images folder not found: {image_dir!r}.")
    paths = [
        (_inside(image_dir, name, f"{captions_file}:{number}", allow_outside), name, caption)
        for number, name, caption in _read_captions(captions_file)
    ]

    def examples():
        for path, name, caption in paths:
            if not tf.io.gfile.exists(path):
                yield ("skip", "missing_file")
                continue
            with tf.io.gfile.GFile(path, "rb") as f:
                image = f.read()
            key = os.path.splitext(os.path.basename(name))[0]
            yield {"image": image, "caption": caption, "key": key, "url": name}

    return examples()


def webdataset_examples(tar_paths):
    """Examples from img2dataset webdataset tar shards.

    Members are grouped by key (`KEY.jpg`, `KEY.txt`, `KEY.json`); the json
    gives `url` and `status`. A key without an image yields
    `("skip", "no_image_in_tar")`. Any image extension is accepted.

    Args:
        tar_paths: str or list of str.

    Yields:
        Example dicts for `write_tfrecords`.
    """
    for tar_path in [tar_paths] if isinstance(tar_paths, str) else tar_paths:
        with tf.io.gfile.GFile(tar_path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            # img2dataset writes a sample's members next to each other, so a
            # streaming read holds one sample at a time.
            current_key, parts = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                stem, ext = os.path.splitext(member.name)
                if stem != current_key and current_key is not None:
                    yield _webdataset_sample(current_key, parts)
                    parts = {}
                current_key = stem
                parts[ext.lower()] = tar.extractfile(member).read()
            if current_key is not None:
                yield _webdataset_sample(current_key, parts)


def _webdataset_sample(stem, parts):
    image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
    if image is None:
        return ("skip", "no_image_in_tar")
    meta = {}
    if ".json" in parts:
        try:
            meta = json.loads(parts[".json"].decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            meta = {}
    caption = parts.get(".txt", b"")
    try:
        caption = caption.decode("utf-8")
    except UnicodeDecodeError:
        pass  # kept as bytes; the reader counts it as an invalid caption
    return {
        "image": image,
        "caption": caption,
        "key": str(meta.get("key") or os.path.basename(stem)),
        "url": str(meta.get("url") or ""),
        "status": str(meta.get("status") or "success"),
    }
