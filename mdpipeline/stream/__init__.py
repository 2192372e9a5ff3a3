"""Real-time feeds: websocket collectors landing raw frames on Kafka, and the processing of raw ranges."""
