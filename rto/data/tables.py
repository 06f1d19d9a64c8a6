"""Where a table of raw rows comes from: a local .jsonl / .json / .csv / .parquet file, read here row
by row; a folder of such files, a `save_to_disk` folder or a hub id, read by `datasets`.

A local file's line (or Parquet row group) that cannot be parsed becomes an `UnreadableRow` naming
the file and the line: `convert_rows` stops on it with that message, or with `data.on_invalid=skip`
skips and counts it like any other malformed row. (A parser that reads the whole file at once stops
at the first bad byte with its own long traceback and never says which line.) Rows of a local file
are plain dicts: a column whose type changes from row to row is a row error, not a loader crash.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from rto.errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class UnreadableRow:
    """A line of a file (or rows of a Parquet row group) that could not be parsed."""

    file: str
    where: str  # "line 3", "rows 0-99 (row group 0)"
    problem: str

    def __str__(self) -> str:
        return f"{self.file}, {self.where}: {self.problem}"


Row = Union[dict, UnreadableRow]


def _jsonl_rows(path: Path) -> Iterator[Row]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8-sig").rstrip())  # the newline would move the error's column
            except UnicodeDecodeError as err:
                yield UnreadableRow(str(path), f"line {number}", f"not UTF-8 text (byte {err.start + 1} of the line)")
                continue
            except json.JSONDecodeError as err:
                yield UnreadableRow(str(path), f"line {number}", f"not valid JSON ({err.msg} at column {err.colno})")
                continue
            if not isinstance(row, dict):
                yield UnreadableRow(str(path), f"line {number}", f"a JSON {type(row).__name__}, not an object {{...}}")
                continue
            yield row


def _json_rows(path: Path) -> Iterator[Row]:
    """A JSON array of objects, or (as `datasets` reads .json files too) JSON Lines."""
    with open(path, "rb") as f:
        start = f.read(4096).decode("utf-8-sig", errors="replace").lstrip()
    if not start.startswith("["):
        yield from _jsonl_rows(path)
        return
    data = path.read_bytes()
    try:
        items = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text; a JSON array is read whole, so nothing in it can "
                        f"be skipped: fix the file, or write it as JSON Lines (.jsonl)") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno} column {err.colno}: not valid JSON ({err.msg}); a JSON array is "
                        f"read whole, so data.on_invalid=skip cannot skip it: fix the file, or write it as JSON "
                        f"Lines (.jsonl), one row a line") from err
    for index, item in enumerate(items):
        yield item if isinstance(item, dict) else \
            UnreadableRow(str(path), f"item {index}", f"a JSON {type(item).__name__}, not an object {{...}}")


def _csv_rows(path: Path) -> Iterator[Row]:
    """Every cell is text; a record with another number of fields than the header is unreadable."""
    # undecodable bytes become lone surrogates (surrogateescape), found per record below
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f, strict=True)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty, or no header line (the CSV's first line names the columns)")
        while True:
            line = reader.line_num + 1  # a quoted field may span lines: the record's first line
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                yield UnreadableRow(str(path), f"line {line}", f"not valid CSV ({err})")
                continue
            if not fields:
                continue  # a blank line
            if len(fields) != len(header):
                yield UnreadableRow(str(path), f"line {line}",
                                    f"{len(fields)} fields, but the header names {len(header)} columns")
            elif not all(_is_text(field) for field in fields):
                yield UnreadableRow(str(path), f"line {line}", "not UTF-8 text")
            else:
                yield dict(zip(header, fields))


def _is_text(field: str) -> bool:
    try:
        field.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: bytes that were not UTF-8
        return False
    return True


def _parquet_rows(path: Path) -> Iterator[Row]:
    """Row group by row group: a group that cannot be decoded is unreadable, one entry per row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: cannot be read as Parquet ({str(err).splitlines()[0]}): the file is truncated "
                        f"or not Parquet, and nothing in it can be skipped; write it again") from err
    first = 0
    for group in range(parquet.num_row_groups):
        n = parquet.metadata.row_group(group).num_rows
        try:
            yield from parquet.read_row_group(group).to_pylist()
        except (pa.ArrowException, OSError) as err:
            where = f"rows {first}-{first + n - 1} (row group {group})"
            for _ in range(n):
                yield UnreadableRow(str(path), where, f"cannot be decoded ({str(err).splitlines()[0]})")
        first += n


READERS: dict[str, Callable[[Path], Iterator[Row]]] = {
    ".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}


def read_file(path: Path, limit: Optional[int] = None) -> list[Row]:
    """The rows of a local file (the first `limit`, unreadable lines counted among them)."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r} (use {', '.join(SUFFIXES)})")
    rows = []
    for row in reader(path):
        if limit is not None and len(rows) >= limit:
            break
        rows.append(row)
    return rows


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or Path(path).suffix.lower() in SUFFIXES


def _first_unreadable(folder: Path) -> Optional[UnreadableRow]:
    """Where `datasets` failed on a folder of files: the first line our own readers cannot parse."""
    for file in sorted(p for p in folder.rglob("*") if p.suffix.lower() in READERS):
        try:
            found = next((row for row in READERS[file.suffix.lower()](file) if isinstance(row, UnreadableRow)), None)
        except DataError as err:
            return UnreadableRow(str(file), "the file", str(err))
        if found is not None:
            return found
    return None


def load_table(path: str, split: str = "train", limit: Optional[int] = None):
    """Rows of a local file (a list, see `read_file`), or a `datasets.Dataset` from a folder of data
    files, a `save_to_disk` folder or a hub id (`datasets.load_dataset(path, split=...)`)."""
    local = Path(path).expanduser()
    if local.is_file():
        return read_file(local, limit)
    if not local.exists() and _looks_local(path):
        raise DataError(f"{path}: no such file or folder")
    import datasets
    try:
        if local.is_dir() and (local / "state.json").exists():
            table = datasets.load_from_disk(str(local))
        else:  # a local folder of data files, or a hub id
            table = datasets.load_dataset(str(local) if local.is_dir() else path, split=split)
    except (datasets.exceptions.DatasetsError, ConnectionError, FileNotFoundError, ValueError) as err:
        raise _unloadable(path, split, local, err) from err
    if isinstance(table, datasets.DatasetDict):
        if split not in table:
            raise DataError(f"{path}: no split {split!r} (it has {', '.join(table)})")
        table = table[split]
    if limit is not None:
        table = table.select(range(min(limit, len(table))))
    return table


def _unloadable(path: str, split: str, local: Path, err: Exception) -> DataError:
    reason = str(err.__cause__ or err).splitlines()[0] if str(err.__cause__ or err) else type(err).__name__
    if local.is_dir():
        bad = _first_unreadable(local)
        if bad is not None:
            return DataError(f"{bad} (in the folder {path}; a folder is read whole: fix or remove that line, or "
                             f"give the file as data.path, where data.on_invalid=skip can skip it)")
        return DataError(f"{path}: cannot be read as a folder of data files ({reason})")
    return DataError(f"{path} [{split}]: not a local file or folder, and cannot be loaded from the hub ({reason}); "
                     f"check the path, id and split, or without network (HF_HUB_OFFLINE=1) give a local file")
