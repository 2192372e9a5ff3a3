"""Step 6, distribute: Kafka topics, deterministic events, broker-confirmed publishing, subscription."""
