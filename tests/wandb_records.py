"""Read an offline W&B run file (`run-*.wandb`) without a server, to check what a run logged.

The file is a LevelDB-style log of protobuf `Record`s: a 7-byte header (":W&B", magic, version),
then 32 KiB blocks of chunks, each `crc32 (4) | length (2) | type (1) | data`, a record being one
FULL chunk or FIRST, MIDDLE..., LAST. wandb >= 0.2x no longer ships a Python reader for it.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

from wandb.proto import wandb_internal_pb2

HEADER, BLOCK, CHUNK_HEADER = 7, 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        chunk = data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def logged(path: Path) -> dict:
    """The history keys, summary keys, config keys, group, name and tags of one offline run."""
    out = {"history": set(), "summary": set(), "config": set(), "group": None, "name": None, "tags": [],
           "tables": set()}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            out["history"] |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "summary":
            out["summary"] |= {item.key or "/".join(item.nested_key) for item in record.summary.update}
        elif kind == "config":
            out["config"] |= {item.key or "/".join(item.nested_key) for item in record.config.update}
        elif kind == "run":
            out["group"], out["name"], out["tags"] = record.run.run_group, record.run.display_name, list(record.run.tags)
            out["config"] |= {item.key for item in record.run.config.update}
    return out
