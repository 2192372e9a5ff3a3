"""Tables for people and for pipes: a rich table on a terminal, tab-separated text otherwise.

A table printed into a pipe or a narrow terminal must never cut an identifier short ("validated/fi…"):
on a terminal long cells fold onto the next line; anywhere else each row is one line of
tab-separated values under a header line, which `cut`, `grep` and spreadsheets read as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table


def print_table(console: Console, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]], *,
                right: Sequence[str] = ()) -> None:
    """Print `rows` under `columns` (cells as text; `right`: columns aligned right on a terminal)."""
    if not console.is_terminal:  # written as is: rich would expand the tabs
        console.file.write(f"# {title}\n")
        for line in (columns, *rows):
            console.file.write("\t".join(_plain(v) for v in line) + "\n")
        console.file.flush()
        return
    table = Table(title=title)
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left", overflow="fold")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    console.print(table)


def _plain(value: object) -> str:
    """A cell as one line of text (markup removed, tabs and newlines as spaces)."""
    text = str(value)
    for markup in ("[red]", "[/]", "[green]", "[bold]"):
        text = text.replace(markup, "")
    return text.replace("\t", " ").replace("\n", " ")
