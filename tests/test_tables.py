"""Local preference files read row by row (`rto/data/tables.py`): an unreadable line is a row that names
its file and line, stopped on or skipped and counted by `convert_rows`; the set-size check covers every
row set of a DataBundle, new ones included."""

from __future__ import annotations

import dataclasses
import json
import logging

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from rto.data.preference_formats import FORMATS, RowError, convert_rows
from rto.data.tables import UnreadableRow, load_table
from rto.data.validate import EmptySetError, check_set_sizes
from rto.errors import DataError, UserError

ROW = {"prompt": "p", "chosen": "a", "rejected": "b"}


def plain(rows, on_invalid="raise"):
    return convert_rows(rows, FORMATS["plain"], "src", on_invalid)


def test_jsonl_rows_match_what_pandas_wrote(tmp_path):
    messages = [{"role": "user", "content": "hi"}]
    frame = pd.DataFrame([{**ROW, "prompt": messages}, {**ROW, "prompt": messages, "chosen": None}])
    frame.to_json(tmp_path / "a.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "a.parquet")
    from_jsonl, from_parquet = load_table(str(tmp_path / "a.jsonl")), load_table(str(tmp_path / "a.parquet"))
    assert from_jsonl == from_parquet == [{**ROW, "prompt": messages}, {**ROW, "prompt": messages, "chosen": None}]


def test_unreadable_jsonl_lines_name_file_and_line(tmp_path, caplog):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\n".join([json.dumps(ROW).encode(), b"", b'{"prompt": ', b"[1, 2]", b'{"prompt": "\xff"}',
                                 json.dumps(ROW).encode()]) + b"\n")
    table = load_table(str(path))
    bad = [row for row in table if isinstance(row, UnreadableRow)]
    assert [(r.where, r.problem.split(" (")[0]) for r in bad] == [
        ("line 3", "not valid JSON"), ("line 4", "a JSON list, not an object {...}"), ("line 5", "not UTF-8 text")]
    with pytest.raises(RowError, match=rf"{path}, line 3: not valid JSON \(Expecting value at column 11\) .*on_invalid=skip"):
        plain(table)
    with caplog.at_level(logging.WARNING):
        assert len(plain(table, "skip")) == 2
    assert "skipped 3 of 5 malformed rows (3 unreadable: line 3, line 4, line 5)" in caplog.text
    assert len(load_table(str(path), limit=3)) == 3  # the first 3 rows, unreadable lines counted


def test_csv_cells_are_text_and_bad_records_are_unreadable(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b'prompt,chosen,rejected\np,a,b\n"multi\nline",a,b\np,a,b,extra\np,"a"x,b\np,\xff,b\np,a,\n')
    table = load_table(str(path))
    assert table[0] == ROW and table[1]["prompt"] == "multi\nline" and table[-1]["rejected"] == ""
    assert [(r.where, r.problem.split(" (")[0]) for r in table if isinstance(r, UnreadableRow)] == [
        ("line 5", "4 fields, but the header names 3 columns"), ("line 6", "not valid CSV"),
        ("line 7", "not UTF-8 text")]
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="no header line"):
        load_table(str(tmp_path / "empty.csv"))


def test_parquet_footer_and_row_groups(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist([ROW] * 6), path, row_group_size=2)
    assert len(load_table(str(path))) == 6 and len(load_table(str(path), limit=3)) == 3
    data = path.read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[:-20])
    with pytest.raises(DataError, match=r"cut.parquet: cannot be read as Parquet .*nothing in it can be skipped"):
        load_table(str(tmp_path / "cut.parquet"))


def test_json_array_and_other_files(tmp_path):
    (tmp_path / "ok.json").write_text(json.dumps([ROW, ROW, 3]))
    table = load_table(str(tmp_path / "ok.json"))
    assert table[:2] == [ROW, ROW] and str(table[2]).endswith("item 2: a JSON int, not an object {...}")
    (tmp_path / "lines.json").write_text(json.dumps(ROW) + "\n" + json.dumps(ROW) + "\n")
    assert load_table(str(tmp_path / "lines.json")) == [ROW, ROW]  # JSON Lines in a .json file, as datasets reads it
    (tmp_path / "bad.json").write_text("[\n" + json.dumps(ROW) + ",\n{oops}\n]")
    with pytest.raises(DataError, match=r"bad.json, line 3 column 2: not valid JSON"):
        load_table(str(tmp_path / "bad.json"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match=r"x.txt: unknown file type '.txt'"):
        load_table(str(tmp_path / "x.txt"))
    with pytest.raises(DataError, match="no such file or folder"):
        load_table(str(tmp_path / "missing.jsonl"))


def test_folder_of_files_names_the_bad_line(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps(ROW) + "\n{broken\n")
    with pytest.raises(DataError, match=r"train.jsonl, line 2: not valid JSON .*in the folder"):
        load_table(str(folder))


def test_every_list_of_the_bundle_is_a_set_that_must_hold_rows():
    @dataclasses.dataclass
    class Bundle:  # a bundle with a set the check was never told about
        sft_rows: list
        val_pairs: list
        extra_prompts: list
        gold: object = None

    cfg = OmegaConf.create({"name": "embedded", "n_sft": 5})
    check_set_sizes(Bundle([1], [], [1, 2]), cfg)  # val_pairs may be empty (data.val_fraction=0)
    with pytest.raises(EmptySetError, match=r"the extra_prompts set has 0 rows, it needs at least 1: give it more"):
        check_set_sizes(Bundle([1], [], []), cfg)
    with pytest.raises(UserError, match=r"the sft_rows set has 0 rows \(data.n_sft=5\)"):
        check_set_sizes(Bundle([], [], [1]), cfg)
