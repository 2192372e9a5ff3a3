"""Serving the read API with uvicorn: in the foreground (`mdpipeline serve`) or in a background thread.

The application is `mdpipeline.serve.app.create_app`; its OpenAPI schema is served at `/openapi.json`
and browsable at `/docs`. uvicorn runs the synchronous handlers in a worker thread pool; the database
pool bounds how many of them query at once.
"""

from __future__ import annotations

import threading
import time

import uvicorn

from mdpipeline.serve.app import create_app
from mdpipeline.serve.limits import ApiLimits


def run(database_url: str, host: str = "127.0.0.1", port: int = 8080, limits: ApiLimits | None = None) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM stop it gracefully)."""
    uvicorn.run(create_app(database_url, limits), host=host, port=port, log_level="info",
                timeout_graceful_shutdown=10)


class BackgroundServer:
    """The read API on a port (0: any free one) in a daemon thread; `url` once started, `stop()` to end."""

    def __init__(self, database_url: str, host: str = "127.0.0.1", port: int = 0,
                 limits: ApiLimits | None = None) -> None:
        config = uvicorn.Config(create_app(database_url, limits), host=host, port=port, log_level="warning",
                                lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="read-api", daemon=True)
        self.url = ""

    def start(self, timeout: float = 20.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the read API did not start")
            time.sleep(0.02)
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)
