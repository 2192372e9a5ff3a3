"""The thin Dagster layer: partitions, resources, IO, assets and checks that wire the pure core."""

import warnings

import dagster as dg

# BackfillPolicy and selection-string parameters are beta, partitioned asset checks a preview, in
# Dagster 1.13; we use them on purpose.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
