"""The checked-in instrument universe: instruments, symbology with validity periods, provider setup."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from mdpipeline.yaml_files import read_yaml

OPEN_END = date(9999, 12, 31)


@dataclass(frozen=True)
class Instrument:
    """An instrument of the master, independent of any ticker."""

    id: int
    name: str
    mic: str
    currency: str
    asset_class: str
    figi: str | None = None
    isin: str | None = None


@dataclass(frozen=True)
class ProviderSetup:
    """Per-provider settings from the universe file."""

    name: str
    enabled: bool
    symbols: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Universe:
    """Instruments, their symbology and the providers that serve them."""

    exchange_calendar: str
    instruments: tuple[Instrument, ...]
    symbology: pl.DataFrame  # instrument_id, symbol, valid_from, valid_to (inclusive)
    providers: dict[str, ProviderSetup]

    def provider(self, name: str) -> ProviderSetup:
        """Setup of provider `name`; a clear error when the universe does not configure it."""
        try:
            return self.providers[name]
        except KeyError:
            raise KeyError(
                f"provider {name!r} is not configured in the universe file "
                f"(configured: {', '.join(sorted(self.providers))})"
            ) from None

    def instruments_frame(self) -> pl.DataFrame:
        """The instrument master as a frame."""
        return pl.DataFrame(
            [vars(i) for i in self.instruments],
            schema={"id": pl.Int64, "name": pl.String, "mic": pl.String, "currency": pl.String,
                    "asset_class": pl.String, "figi": pl.String, "isin": pl.String},
        )


def _as_date(value: Any, what: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"universe: {what} is not an ISO date: {value!r}") from None


def load_universe(path: Path) -> Universe:
    """Read and check the universe file; errors name the offending entry."""
    doc = read_yaml(path)
    if not isinstance(doc, dict) or "instruments" not in doc:
        raise ValueError(f"universe file {path} has no 'instruments' list")
    instruments: list[Instrument] = []
    rows: list[dict[str, Any]] = []
    for entry in doc["instruments"]:
        inst = Instrument(
            id=int(entry["id"]), name=str(entry["name"]), mic=str(entry["mic"]),
            currency=str(entry.get("currency", "USD")), asset_class=str(entry.get("asset_class", "equity")),
            figi=entry.get("figi"), isin=entry.get("isin"),
        )
        instruments.append(inst)
        for sym in entry.get("symbols", []):
            rows.append({
                "instrument_id": inst.id,
                "symbol": str(sym["symbol"]),
                "valid_from": _as_date(sym.get("valid_from", "1900-01-01"), f"{inst.id} valid_from"),
                "valid_to": _as_date(sym.get("valid_to", OPEN_END), f"{inst.id} valid_to"),
            })
    ids = [i.id for i in instruments]
    if len(ids) != len(set(ids)):
        raise ValueError(f"universe file {path}: duplicate instrument ids")
    symbology = pl.DataFrame(rows, schema={"instrument_id": pl.Int64, "symbol": pl.String,
                                           "valid_from": pl.Date, "valid_to": pl.Date})
    _check_symbology(symbology, path)
    providers = {
        name: ProviderSetup(
            name=name,
            enabled=bool(cfg.get("enabled", True)),
            symbols=tuple(cfg.get("symbols", [])),
            options={k: v for k, v in cfg.items() if k not in ("enabled", "symbols")},
        )
        for name, cfg in (doc.get("providers") or {}).items()
    }
    return Universe(
        exchange_calendar=str(doc.get("exchange_calendar", "XNYS")),
        instruments=tuple(instruments),
        symbology=symbology,
        providers=providers,
    )


def _check_symbology(symbology: pl.DataFrame, path: Path) -> None:
    """The same ticker may be reused, but never by two instruments over overlapping periods."""
    s = symbology.sort("symbol", "valid_from")
    overlap = s.filter(
        (pl.col("symbol") == pl.col("symbol").shift(1))
        & (pl.col("valid_from") <= pl.col("valid_to").shift(1))
    )
    if overlap.height:
        raise ValueError(f"universe file {path}: overlapping symbology for {overlap['symbol'].to_list()}")
