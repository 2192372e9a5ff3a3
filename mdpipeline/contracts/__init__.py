"""Data contracts, the bottom of the import graph: every frame's columns and dtypes, said once.

`frames` holds the provider standard frames, the canonical and stored frames of each dataset, the
adjustment factors; `events` the fields each topic's messages carry; `sql` how a dtype is stored.
The pandera schemas (`quality.schemas`), the loaders' column lists and the lineage metadata are
built from these. Imports nothing of the package.
"""

from mdpipeline.contracts.frames import (
    BAR_VALUES,
    CANONICAL_BARS_1D,
    CANONICAL_BARS_1M,
    CANONICAL_CORPORATE_ACTIONS,
    DATASETS,
    FACTOR_COLUMNS,
    PRICE_COLUMNS,
    QUARANTINE_COLUMNS,
    REJECT_COLUMNS,
    STANDARD_BARS_1D,
    STANDARD_BARS_1M,
    STANDARD_COLUMNS,
    STANDARD_CORPORATE_ACTIONS,
    STORED_ACTIONS,
    STORED_BARS_1D,
    STORED_BARS_1M,
    TABLE_COLUMNS,
    empty_standard_frame,
)

__all__ = [
    "BAR_VALUES",
    "CANONICAL_BARS_1D",
    "CANONICAL_BARS_1M",
    "CANONICAL_CORPORATE_ACTIONS",
    "DATASETS",
    "FACTOR_COLUMNS",
    "PRICE_COLUMNS",
    "QUARANTINE_COLUMNS",
    "REJECT_COLUMNS",
    "STANDARD_BARS_1D",
    "STANDARD_BARS_1M",
    "STANDARD_COLUMNS",
    "STANDARD_CORPORATE_ACTIONS",
    "STORED_ACTIONS",
    "STORED_BARS_1D",
    "STORED_BARS_1M",
    "TABLE_COLUMNS",
    "empty_standard_frame",
]
