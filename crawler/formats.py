"""Rows as text: an aligned table for people, JSON Lines and CSV for other tools."""

from __future__ import annotations

import base64
import csv
import json
import re
from collections.abc import Iterable, Sequence
from typing import IO, Any

FORMATS = ("table", "jsonl", "csv")
# What `crawler export` writes (crawler/export.py); here so that the CLI lists them without importing it.
EXPORT_FORMATS = ("jsonl", "csv", "warc")
_NUMBER = re.compile(r"-?[\d,]+(\.\d+)?")
MAX_CELL = 70  # table cells longer than this are cut with "…"


def write_rows(out: IO[str], fmt: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Write rows (value sequences in column order) in one of FORMATS; returns how many rows."""
    if fmt == "table":
        return write_table(out, columns, rows)
    if fmt == "jsonl":
        return write_jsonl(out, columns, rows)
    if fmt == "csv":
        return write_csv(out, columns, rows)
    raise ValueError(f"unknown format {fmt!r}")


def write_table(out: IO[str], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    cells = [[table_cell(value) for value in row] for row in rows]
    if not cells:
        out.write("(no rows)\n")
        return 0
    widths = [max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(columns)]
    numeric = [all(_is_number(row[i]) for row in cells if row[i]) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip() + "\n"

    out.write(line(list(columns)))
    out.write(line(["-" * width for width in widths]))
    for row in cells:
        out.write(line(row))
    return len(cells)


def write_jsonl(out: IO[str], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    keys = unique_names(columns)
    count = 0
    for row in rows:
        record = {key: json_value(value) for key, value in zip(keys, row, strict=True)}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


def write_csv(out: IO[str], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([csv_value(value) for value in row])
        count += 1
    return count


def table_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, bytes):
        return f"<blob {len(value):,} bytes>"
    if isinstance(value, (list, tuple, dict)):
        value = json.dumps(value, ensure_ascii=False)
    text = " ".join(str(value).split())
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def json_value(value: Any) -> Any:
    """BLOBs become base64 text (CAST(x AS TEXT) in SQL gives text instead)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


def unique_names(columns: Sequence[str]) -> list[str]:
    """JSON keys for columns; a repeated name (SELECT a.id, b.id) gets _2, _3, …"""
    seen: dict[str, int] = {}
    names = []
    for name in columns:
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None
