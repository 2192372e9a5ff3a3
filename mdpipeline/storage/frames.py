"""Intermediate frames between pipeline steps: one Parquet file per chunk, read back lazily.

A step writes each chunk it produced as one file that records what it covers: a date range of the
frame's date column and a symbol group (`*` for every symbol). Any later step, in the same run or
another one, reads any range back as a lazy scan: for each (date, symbol) the newest file covering
it wins, so a re-run of part of a range supersedes exactly that part, whatever chunking the earlier
runs used. An empty chunk still writes an (empty) file: "this chunk had no rows" is a fact that must
supersede older rows.

File names carry the coverage, the write time and a random token, so concurrent runs never write
the same path; a file is written under a temporary name and renamed into place. Files that a newer
one covers completely are deleted once they are older than a grace period, so readers that listed
them a moment ago can still open them.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

ALL_SYMBOLS = "*"
GC_GRACE_SECONDS = 3600.0
_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})_(\d{4}-\d{2}-\d{2})_([0-9a-f]{16}|all)_(\d+)_([0-9a-f]{8})\.parquet$")


@dataclass(frozen=True)
class FrameFile:
    """One chunk file and what it covers."""

    path: Path
    start: date
    end: date
    symbols: frozenset[str]  # {"*"} for every symbol
    written_ns: int

    def covers_symbol_set(self, symbols: frozenset[str]) -> bool:
        """True when every one of `symbols` is in this file's group."""
        return ALL_SYMBOLS in self.symbols or symbols <= self.symbols


def symbol_group(symbols: Sequence[str]) -> frozenset[str]:
    """The symbol group of a chunk: its symbols, or `{"*"}` for every symbol."""
    group = frozenset(symbols)
    return frozenset({ALL_SYMBOLS}) if not group or ALL_SYMBOLS in group else group


class FrameStore:
    """Chunk files of intermediate frames under `base_dir/<asset path>/<part>/`."""

    def __init__(self, base_dir: Path | str, gc_grace_seconds: float = GC_GRACE_SECONDS) -> None:
        self.base_dir = Path(base_dir)
        self.gc_grace_seconds = gc_grace_seconds

    def write(self, asset: Sequence[str], part: str, frame: pl.DataFrame, *, start: date, end: date,
              symbols: Sequence[str]) -> Path:
        """Store `frame` as the chunk [start, end] x `symbols` of `asset`'s `part` (e.g. rows, rejects)."""
        folder = self._folder(asset, part)
        folder.mkdir(parents=True, exist_ok=True)
        group = symbol_group(symbols)
        digest = self._remember_group(asset, group)
        written = time.time_ns()
        path = folder / f"{start.isoformat()}_{end.isoformat()}_{digest}_{written}_{uuid.uuid4().hex[:8]}.parquet"
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        frame.write_parquet(tmp, compression="lz4", statistics=True)
        os.replace(tmp, path)
        self._collect_garbage(asset, part, FrameFile(path, start, end, group, written))
        return path

    def scan(self, asset: Sequence[str], part: str, *, start: date, end: date, symbols: Sequence[str],
             date_column: str, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
        """The rows of [start, end] x `symbols`, each (date, symbol) from the newest file covering it.

        Dates nothing covers have no rows (the step upstream has not written them). `schema` is the
        frame's schema, for the empty result.
        """
        wanted = symbol_group(symbols)
        files = sorted((f for f in self.files(asset, part) if f.start <= end and f.end >= start
                        and (ALL_SYMBOLS in f.symbols or ALL_SYMBOLS in wanted or f.symbols & wanted)),
                       key=lambda f: f.written_ns, reverse=True)
        if not files:
            return pl.LazyFrame(schema=schema)
        in_range = pl.col(date_column).is_between(start, end)
        newest = files[0]
        if newest.start <= start and newest.end >= end and newest.covers_symbol_set(wanted):
            return self._rows(newest, in_range, wanted)
        claims = self._claims(files, start, end, wanted)
        parts = []
        for i, f in enumerate(files):
            mine = claims.filter(pl.col("__file") == i).drop("__file")
            if mine.is_empty():
                continue
            parts.append(self._rows(f, in_range, wanted).join(
                mine.lazy().rename({"__date": date_column, "__symbol": "symbol"}), on=[date_column, "symbol"],
                how="semi"))
        return pl.concat(parts, how="vertical") if parts else pl.LazyFrame(schema=schema)

    def files(self, asset: Sequence[str], part: str) -> list[FrameFile]:
        """Every chunk file of `asset`'s `part`."""
        folder = self._folder(asset, part)
        if not folder.is_dir():
            return []
        found = []
        for entry in os.scandir(folder):
            match = _NAME.match(entry.name)
            if match:
                found.append(FrameFile(Path(entry.path), date.fromisoformat(match[1]), date.fromisoformat(match[2]),
                                       self._group(asset, match[3]), int(match[4])))
        return found

    # -- helpers ----------------------------------------------------------------------------------

    def _folder(self, asset: Sequence[str], part: str) -> Path:
        return self.base_dir.joinpath(*asset, part)

    def _groups_dir(self, asset: Sequence[str]) -> Path:
        return self.base_dir.joinpath(*asset, "_symbols")

    def _remember_group(self, asset: Sequence[str], group: frozenset[str]) -> str:
        """Short digest naming a symbol group; its members are kept in `_symbols/<digest>.txt`."""
        if ALL_SYMBOLS in group:
            return "all"
        text = "\n".join(sorted(group))
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = self._groups_dir(asset) / f"{digest}.txt"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{digest}.{uuid.uuid4().hex}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        return digest

    def _group(self, asset: Sequence[str], digest: str) -> frozenset[str]:
        if digest == "all":
            return frozenset({ALL_SYMBOLS})
        return frozenset((self._groups_dir(asset) / f"{digest}.txt").read_text().split("\n"))

    @staticmethod
    def _rows(f: FrameFile, in_range: pl.Expr, wanted: frozenset[str]) -> pl.LazyFrame:
        rows = pl.scan_parquet(f.path).filter(in_range)
        if ALL_SYMBOLS in wanted or f.symbols <= wanted:
            return rows
        return rows.filter(pl.col("symbol").is_in(sorted(wanted)))

    @staticmethod
    def _claims(files: list[FrameFile], start: date, end: date, wanted: frozenset[str]) -> pl.DataFrame:
        """(__date, __symbol, __file): the newest file (index into `files`) covering each wanted pair.

        Only wanted symbols can be claimed; a file of every symbol (`*`) claims the symbols named by
        the other files or the wanted ones (when those are named).
        """
        named = sorted(wanted - {ALL_SYMBOLS} or set().union(*(f.symbols for f in files)) - {ALL_SYMBOLS})
        pieces = []
        for i, f in enumerate(files):
            first, last = max(f.start, start), min(f.end, end)
            members = named if ALL_SYMBOLS in f.symbols else sorted(f.symbols & set(named))
            if not members:
                continue
            days = pl.date_range(first, last, "1d", eager=True).alias("__date")
            pieces.append(pl.DataFrame({"__symbol": members}).join(days.to_frame(), how="cross")
                          .with_columns(pl.lit(i, dtype=pl.Int32).alias("__file")))
        if not pieces:
            return pl.DataFrame(schema={"__date": pl.Date, "__symbol": pl.String, "__file": pl.Int32})
        return pl.concat(pieces).group_by("__date", "__symbol").agg(pl.col("__file").min())

    def _collect_garbage(self, asset: Sequence[str], part: str, newest: FrameFile) -> None:
        """Delete older files that `newest` covers completely, once past the grace period."""
        cutoff = newest.written_ns - int(self.gc_grace_seconds * 1e9)
        for f in self.files(asset, part):
            if (f.written_ns < cutoff and f.start >= newest.start and f.end <= newest.end
                    and newest.covers_symbol_set(f.symbols)):
                f.path.unlink(missing_ok=True)
