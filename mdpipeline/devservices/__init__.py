"""Local development services: a PostgreSQL cluster and a Kafka-compatible broker (tansu).

They back `mdpipeline dev up|down|status`, `mdpipeline demo` and the integration tests, with no
Docker and no system services needed.
"""

from mdpipeline.devservices.broker import BrokerError, LocalBroker, find_tansu
from mdpipeline.devservices.postgres import LocalPostgres, PostgresError, find_bindir, free_port
from mdpipeline.devservices.stack import DevStack, DevStatus, dev_down, dev_status, dev_up, update_env_file

__all__ = [
    "BrokerError",
    "DevStack",
    "DevStatus",
    "LocalBroker",
    "LocalPostgres",
    "PostgresError",
    "dev_down",
    "dev_status",
    "dev_up",
    "find_bindir",
    "find_tansu",
    "free_port",
    "update_env_file",
]
