"""Step 3, normalize: provider standard frames -> canonical frames (instrument ids, UTC, canonical names)."""
