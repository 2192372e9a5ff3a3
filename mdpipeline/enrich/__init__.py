"""Step 4, enrich: reference data (instrument master, symbology) and, later, corporate-action adjustment."""
