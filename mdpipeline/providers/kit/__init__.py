"""The adapter kit: what provider adapters share beyond the HTTP client, one small module per concern:
options (the whitelist check), payloads (stored payloads built and read back one way), pagination (cursor
loops with loop and page-count guards), bars (epoch timestamps to bar times and session dates, regular
hours, session grouping), actions (split ratios) and rate_limits (reset headers)."""
