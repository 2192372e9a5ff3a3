"""Step 5, store: DDL and migrations, binary COPY loading, partition replacement, reads."""
