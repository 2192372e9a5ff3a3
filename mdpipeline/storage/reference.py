"""Load the checked-in instrument master and symbology into `ref`."""

from __future__ import annotations

import psycopg

from mdpipeline.storage.binary_copy import copy_frame
from mdpipeline.universe import Universe


def sync_reference(conn: psycopg.Connection, universe: Universe) -> dict[str, int]:
    """Make `ref.instruments` and `ref.symbology` equal to the universe file, in one transaction.

    Instruments are upserted (never deleted: stored bars may still point at them); symbology is
    replaced whole, since it is defined by the file alone.
    """
    instruments = universe.instruments_frame().rename({"id": "instrument_id"})
    with conn.transaction():
        conn.execute("create temporary table _instruments (like ref.instruments including defaults) on commit drop")
        with conn.cursor() as cur:
            copy_frame(cur, "_instruments", instruments)
        conn.execute(
            """
            insert into ref.instruments (instrument_id, name, mic, currency, asset_class, figi, isin)
            select instrument_id, name, mic, currency, asset_class, figi, isin from _instruments
            on conflict (instrument_id) do update set name = excluded.name, mic = excluded.mic,
                currency = excluded.currency, asset_class = excluded.asset_class, figi = excluded.figi,
                isin = excluded.isin, updated_at = now()
            """
        )
        conn.execute("delete from ref.symbology")
        with conn.cursor() as cur:
            copy_frame(cur, "ref.symbology", universe.symbology)
    return {"instruments": instruments.height, "symbology": universe.symbology.height}
