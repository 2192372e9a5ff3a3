"""The Dagster code location: `dagster dev -w workspace.yaml` (and the code server) load `defs` from here."""

from __future__ import annotations

from mdpipeline.orchestration.assembly import build_definitions

defs = build_definitions()
