"""`mdpipeline dev down` / `dev up` between publishing and consuming: the local stack's broker keeps
every topic, message and committed consumer offset in `.mdpipeline/kafka`."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdpipeline.devservices import dev_down, dev_status, dev_up
from mdpipeline.distribute.publisher import send
from mdpipeline.distribute.subscriber import consume, end_offsets
from mdpipeline.distribute.topics import TopicSpec, ensure_topics

pytestmark = pytest.mark.faults


@pytest.fixture
def project() -> Iterator[Path]:
    """A project directory the `postgres` user can traverse, its dev stack stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="mdp-devrestart-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        dev_down(root)
        shutil.rmtree(root, ignore_errors=True)


def test_dev_down_and_up_between_publish_and_consume_keeps_everything(project: Path) -> None:
    servers = dev_up(project).bootstrap_servers
    topic = TopicSpec(f"test.devrestart.{uuid.uuid4().hex[:8]}", partitions=3)
    ensure_topics(servers, (topic,))
    values = [f'{{"n": {i}}}' for i in range(600)]
    delivery = send(servers, topic.name, [str(i % 17) for i in range(600)], values, [("mdp-run-id", b"r1")])
    assert delivery.confirmed == 600
    group = f"test-{uuid.uuid4().hex[:8]}"
    first_half = [e.value for e in consume(servers, topic.name, limit=300, group_id=group)]
    ends = end_offsets(servers, topic.name)
    assert sum(high for _, high in ends.values()) == 600

    dev_down(project)
    assert not dev_status(project).broker_running
    assert dev_up(project).bootstrap_servers == servers  # same port again

    assert end_offsets(servers, topic.name) == ends  # every message still there
    everything = [e.value for e in consume(servers, topic.name, limit=600, group_id=f"test-{uuid.uuid4().hex[:8]}")]
    assert sorted(everything) == sorted(values)
    rest = [e.value for e in consume(servers, topic.name, limit=300, idle_timeout=2.0, group_id=group)]
    assert len(first_half) == 300
    assert sorted(first_half + rest) == sorted(values)  # the group's committed offsets survived too
