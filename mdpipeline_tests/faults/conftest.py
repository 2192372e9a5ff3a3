"""Brokers of their own for the fault tests: killing or stopping one never touches the session's broker."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdpipeline.devservices import LocalBroker


@pytest.fixture
def own_broker() -> Iterator[LocalBroker]:
    """A running Apache Kafka node of this test alone, started as `dev up` starts one; removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="mdp-kafka-fault-"))
    broker = LocalBroker(root)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
