"""Metadata tables of an image dataset: a CSV with a header (SubpopBench's and Group DRO's `metadata.csv`), or
whitespace-separated lists such as CelebA's, joined on the file column.

A table is read as text: `sep` (null: any run of whitespace), `skip` lines dropped first, then a header line
unless `names` gives the columns. A header one name shorter than its rows names every column but the first,
which is then the file column (CelebA's `list_attr_celeba.txt`: a count line, 40 attribute names, then rows of a
file name and 40 values).
"""

import csv
import io
from dataclasses import dataclass

from denetdm.errors import ConfigError, DataError


@dataclass(frozen=True)
class TableSpec:
    """Where a metadata table is and how its text is laid out."""

    path: str
    sep: str | None = ","
    skip: int = 0
    names: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, node: object, index: int) -> "TableSpec":
        """A spec from a config node ({path, sep, skip, names}); one error line for a wrong key or value."""
        where = f"dataset.tables[{index}]"
        if not isinstance(node, dict) or not isinstance(node.get("path"), str) or not node["path"]:
            raise ConfigError(f"{where} must be a mapping with a path (and optionally sep, skip, names), got {node!r}")
        if unknown := set(node) - {"path", "sep", "skip", "names"}:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; it takes path, sep, skip, names")
        sep, skip, names = node.get("sep", ","), node.get("skip", 0), node.get("names")
        if sep is not None and (not isinstance(sep, str) or len(sep) != 1):
            raise ConfigError(f"{where}.sep must be one character or null (whitespace), got {sep!r}")
        if not isinstance(skip, int) or isinstance(skip, bool) or skip < 0:
            raise ConfigError(f"{where}.skip must be an integer >= 0, got {skip!r}")
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise ConfigError(f"{where}.names must be a list of column names or null (a header line), got {names!r}")
        return cls(node["path"], sep, skip, tuple(names) if names else None)


def read_table(text: str, spec: TableSpec, file_col: str) -> list[dict[str, str]]:
    """The table's rows as {column: value} (values as text)."""
    lines = text.splitlines()[spec.skip :]
    if spec.sep is None:
        rows = [line.split() for line in lines if line.strip()]
    else:
        rows = [r for r in csv.reader(io.StringIO("\n".join(lines)), delimiter=spec.sep) if r]
    header = list(spec.names) if spec.names else (rows.pop(0) if rows else [])
    if rows and len(header) == len(rows[0]) - 1:
        header = [file_col, *header]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            line = i + 1 + spec.skip + (0 if spec.names else 1)
            raise DataError(f"metadata table {spec.path}: line {line} has {len(row)} fields, the header {len(header)}")
    return [dict(zip(header, row)) for row in rows]


def join_tables(tables: list[tuple[TableSpec, list[dict]]], file_col: str) -> list[dict[str, str]]:
    """The first table's rows, each extended by the row of every other table with the same file."""
    for spec, rows in tables:
        if rows and file_col not in rows[0]:
            raise DataError(
                f"metadata table {spec.path} has no column {file_col!r} (dataset.columns.file); "
                f"its columns: {', '.join(rows[0])}"
            )
    (first_spec, out), rest = tables[0], tables[1:]
    _unique(first_spec, out, file_col)
    for spec, rows in rest:
        by_file = _unique(spec, rows, file_col)
        for row in out:
            other = by_file.get(row[file_col])
            if other is None:
                raise DataError(
                    f"metadata table {spec.path} has no row for {row[file_col]}, which {first_spec.path} has"
                )
            row.update(other)
    return out


def _unique(spec: TableSpec, rows: list[dict], file_col: str) -> dict[str, dict]:
    """{file: row}, or one error line naming a file listed twice."""
    by_file: dict[str, dict] = {}
    for row in rows:
        if row[file_col] in by_file:
            raise DataError(f"metadata table {spec.path} lists {row[file_col]} twice; keep one row per file")
        by_file[row[file_col]] = row
    return by_file
