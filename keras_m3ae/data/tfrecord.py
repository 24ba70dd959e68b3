"""TFRecord files read as bytes: masked CRC-32C, record heads, compression detection.

Plain Python on the first bytes of a file, no `tf.data` pipeline to build:
these run once for every dataset built (`detect_compression`, the probe)
and once per file opened (`file_compression`). The masked CRC-32C is
TFRecord's; it is computed here in Python (only over the 8 length bytes of
a record, which is cheap) because no CRC-32C package is a dependency of
this project (`google-crc32c` / `crc32c` would be one more wheel for 8
bytes a record).
"""

import gzip
import logging
import struct
import zlib

import tensorflow as tf

logger = logging.getLogger("keras_m3ae.data")

COMPRESSION_TYPES = ("", "GZIP", "ZLIB")
_COMPRESSION_NAMES = {"": "", "NONE": "", "GZIP": "GZIP", "ZLIB": "ZLIB"}
# Files probed when the first ones hold no readable record.
PROBE_FILES = 3


def normalize_compression(compression_type):
    """`None` (detect), or one of `COMPRESSION_TYPES`; raises on anything else."""
    if compression_type is None:
        return None
    name = str(compression_type).upper()
    if name not in _COMPRESSION_NAMES:
        raise ValueError(
            f"compression_type must be None (detect), '', 'GZIP' or 'ZLIB'; got "
            f"{compression_type!r}."
        )
    return _COMPRESSION_NAMES[name]


# What the probe reads of a file at most: enough for the probe's 16 records
# of web-scale image-text data, little enough to cost milliseconds.
_PROBE_BYTES = 4 << 20
# The largest single record the probe reads.
_MAX_PROBE_BYTES = 256 << 20


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def _masked_crc32c(data):
    """TFRecord's masked CRC-32C (of the 8 length bytes: cheap in Python)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _head_bytes(path, compression_type, size=_PROBE_BYTES):
    """Up to `size` (decompressed) bytes from the start of `path`; b"" if they don't decompress."""
    with tf.io.gfile.GFile(path, "rb") as f:
        try:
            if compression_type == "GZIP":
                return gzip.GzipFile(fileobj=f).read(size)
            if compression_type == "ZLIB":
                return _inflate_head(f, size)
        except (OSError, EOFError, zlib.error):
            return b""
        return f.read(size)


def _inflate_head(f, size, chunk=1 << 20):
    """The first `size` bytes of the zlib stream `f`, never inflating more."""
    inflater, out = zlib.decompressobj(), b""
    while len(out) < size:
        data = inflater.unconsumed_tail or f.read(chunk)
        if not data:
            break
        out += inflater.decompress(data, size - len(out))
    return out


def read_records(path, compression_type, count):
    """Up to `count` records from the head of `path`; stops at the first unreadable one.

    Plain Python on the first bytes of the file (no `tf.data` pipeline to
    build: this runs for every dataset built). A record counts when its
    length field passes its CRC and the record fits in the bytes read.
    """
    size = _PROBE_BYTES
    head = _head_bytes(path, compression_type, size)
    records, offset = [], 0
    while len(records) < count and offset + 12 <= len(head):
        length_bytes = head[offset:offset + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", head[offset + 8:offset + 12])
        end = offset + 12 + length
        if _masked_crc32c(length_bytes) != length_crc:
            break
        if end + 4 > len(head):
            # A first record larger than the bytes read (a huge image) is
            # read in full; later ones are left for the pipeline.
            if records or len(head) < size or end + 4 > _MAX_PROBE_BYTES:
                break
            size = end + 4
            head = _head_bytes(path, compression_type, size)
            continue
        records.append(head[offset + 12:end])
        offset = end + 4
    return records


def _head(path, size=8):
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read(size)


def describe(compression_type):
    return {"": "uncompressed", "GZIP": "GZIP", "ZLIB": "ZLIB"}[compression_type]


def _readable_with(paths, compression_type):
    """Whether a record of one of `paths` reads with `compression_type`."""
    return any(read_records(path, compression_type, 1) for path in paths)


def detect_compression(files, compression_type=None):
    """The compression of TFRecord files: the one given, checked, or the one that reads.

    Reads the first record of the first files (up to `PROBE_FILES`, for a
    first file that is broken) with the given compression (None: the first
    of none, GZIP, ZLIB that reads the first readable file). Files that
    read with another one than asked for are an error naming the right
    one. Files further on are checked one by one (`file_compression`).

    Args:
        files: list of non-empty TFRecord files, in reading order.
        compression_type: None, "", "GZIP" or "ZLIB".

    Returns:
        One of `COMPRESSION_TYPES`.

    Raises:
        ValueError: the files read with another compression than the one
            given, or with none.
    """
    compression_type = normalize_compression(compression_type)
    paths = list(files[:PROBE_FILES])
    if compression_type is not None and _readable_with(paths, compression_type):
        return compression_type
    # The compression of the first file that reads with one.
    readable = next(([c for c in COMPRESSION_TYPES if c != compression_type
                      and _readable_with([path], c)] for path in paths
                     if any(_readable_with([path], c) for c in COMPRESSION_TYPES)), [])
    if readable and compression_type is None:
        if readable[0]:
            logger.info("Reading %s-compressed TFRecords (detected in %s).", readable[0],
                        paths[0])
        return readable[0]
    if readable:
        found = readable[0]
        hint = (f"look {found}-compressed: pass compression_type={found!r}" if found
                else "look uncompressed: pass compression_type=''")
        raise ValueError(
            f"No record of {paths} reads as {describe(compression_type)} TFRecords; the "
            f"shards {hint} (or None to detect it).")
    raise ValueError(
        f"No record of the first file(s) {paths} can be read as TFRecords, uncompressed, GZIP "
        f"or ZLIB (the first bytes of {paths[0]} are {_head(paths[0])!r}). Are they TFRecord "
        "shards, or truncated ones?")




def _plain_head(head):
    """Whether `head` (>= 12 bytes) starts like an uncompressed TFRecord (length CRC holds)."""
    return len(head) >= 12 and _masked_crc32c(head[:8]) == struct.unpack("<I", head[8:12])[0]


def file_compression(path, default):
    """The compression of one TFRecord file, from its first 12 bytes.

    GZIP's magic bytes, then a valid TFRecord length CRC (uncompressed),
    then a zlib header; `default` when none of them holds (an empty or
    corrupt file, left to the reader to count).

    Args:
        path: str. A TFRecord file.
        default: one of `COMPRESSION_TYPES`.

    Returns:
        One of `COMPRESSION_TYPES`.
    """
    head = _head(path, 12)
    if head[:2] == b"\x1f\x8b":
        return "GZIP"
    if _plain_head(head):
        return ""
    if len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0:
        return "ZLIB"
    return default
