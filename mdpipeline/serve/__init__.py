"""The read API (`mdpipeline serve`): bars and quality over HTTP as JSON, Arrow IPC or Parquet."""
