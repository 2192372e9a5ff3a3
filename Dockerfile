# syntax=docker/dockerfile:1
#
# One image for every Dagster process of the docker-compose stack (docker-compose.yml):
#   code       the gRPC code server serving mdpipeline.orchestration.definitions (default command)
#   webserver  dagster-webserver, daemon  dagster-daemon run   (same image, other commands)
#   runs       the DockerRunLauncher starts each run in a fresh container of this image
#   migrate    the one-shot `mdpipeline migrate`
# Only the files the package needs are copied, so a local .env or .mdpipeline/ never ends up in it.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/mdpipeline

# The project (with dagster, dagster-webserver and dagster-postgres from its dependencies) and the
# Docker run launcher matching dagster 1.13.
COPY pyproject.toml README.md ./
COPY mdpipeline ./mdpipeline
RUN pip install . "dagster-docker>=0.29,<0.30"

# Checked-in configuration and the sample vendor dumps read by the file provider.
COPY config ./config
COPY samples ./samples

# Dagster instance (PostgreSQL storage, queued runs, Docker run launcher) and workspace (the `code`
# service over gRPC). $DAGSTER_HOME/storage holds compute logs; compose mounts a shared volume there.
ENV DAGSTER_HOME=/opt/dagster/home \
    MDP_UNIVERSE=/opt/mdpipeline/config/universe.yaml \
    MDP_STORAGE_CONFIG=/opt/mdpipeline/config/storage.yaml \
    MDP_FILES_DIR=/opt/mdpipeline/samples/files
RUN mkdir -p /opt/dagster/home/storage
COPY deploy/dagster.yaml deploy/workspace.yaml /opt/dagster/home/

# 4000: code server (gRPC), 3000: webserver (UI).
EXPOSE 4000 3000

CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "mdpipeline.orchestration.definitions"]
