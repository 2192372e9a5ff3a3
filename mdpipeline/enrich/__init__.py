"""Step 4, enrich: corporate actions across providers, and back-adjustment factors.

Reference data (instrument master, symbology) is loaded into `ref` by `mdpipeline.storage.reference`.
"""
