"""Step 2, validate: pandera schemas per layer, row-level quarantine with reasons."""
