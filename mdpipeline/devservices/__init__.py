"""Local development services: a PostgreSQL cluster and an Apache Kafka broker (KRaft).

They back `mdpipeline dev up|down|status`, `mdpipeline demo` and the integration tests, with no
Docker and no system services needed: PostgreSQL from the machine's server binaries, Kafka from jars
Maven resolved once into a per-user cache, run with the machine's JVM.
"""

from mdpipeline.devservices.broker import BrokerError, LocalBroker, prepare_kafka
from mdpipeline.devservices.kafka_dist import KafkaDistError, kafka_dist, kafka_version
from mdpipeline.devservices.postgres import (
    LocalPostgres,
    PostgresError,
    find_bindir,
    free_port,
    timescaledb_installed,
)
from mdpipeline.devservices.stack import DevStack, DevStatus, dev_down, dev_status, dev_up, update_env_file

__all__ = [
    "BrokerError",
    "DevStack",
    "DevStatus",
    "KafkaDistError",
    "LocalBroker",
    "LocalPostgres",
    "PostgresError",
    "dev_down",
    "dev_status",
    "dev_up",
    "find_bindir",
    "free_port",
    "kafka_dist",
    "kafka_version",
    "prepare_kafka",
    "timescaledb_installed",
    "update_env_file",
]
