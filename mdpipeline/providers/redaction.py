"""Secrets out of every URL, message and log line: a `Redactor` per client, and one log filter for the
loggers that print request URLs (urllib3 logs each request line, query string included, at DEBUG).

The filter is attached on first use (`install_log_filter`, called by every `HttpClient` and by
`register_secrets`), never at import time. Logging is process-wide, so the set of secrets it redacts is
too: every secret registered by any client or feed of the process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, quote_plus

REDACTED = "***"
# Default params with these names are credentials even when not listed in `secrets=`.
CREDENTIAL_PARAMS = frozenset({"apikey", "api_key", "apiKey", "token", "key", "secret", "access_token"})
FILTERED_LOGGERS = ("urllib3.connectionpool", "mdpipeline.providers")


class Redactor:
    """Replaces secret values (raw and URL-encoded) by `***` in text."""

    def __init__(self, secrets: Sequence[str]) -> None:
        forms = {f for s in secrets if s for f in (s, quote(s, safe=""), quote_plus(s))}
        self._forms = sorted(forms, key=len, reverse=True)  # longest first: no partial leftovers
        self.secrets = frozenset(s for s in secrets if s)

    def __call__(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, REDACTED)
        return text

    def params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """`params` with secret values replaced (keys kept)."""
        return {k: (REDACTED if str(v) in self.secrets else v) for k, v in params.items()}


class SecretLogFilter(logging.Filter):
    """Redacts every registered secret from the records of the loggers it sits on."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._redact = Redactor(())

    def add(self, secrets: frozenset[str]) -> None:
        """Redact these too."""
        with self._lock:
            if not secrets <= self._secrets:
                self._secrets |= secrets
                self._redact = Redactor(sorted(self._secrets))

    def redactor(self) -> Redactor:
        """The current redactor (its `secrets` are every registered secret)."""
        return self._redact

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self._redact
        if redact.secrets:
            message = record.getMessage()
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
        return True


_FILTER = SecretLogFilter()
_INSTALLED = threading.Event()


def install_log_filter() -> SecretLogFilter:
    """Attach the process's secret filter to the URL-printing loggers (once); return it."""
    if not _INSTALLED.is_set():
        for name in FILTERED_LOGGERS:
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
        _INSTALLED.set()
    return _FILTER


def register_secrets(secrets: Sequence[str]) -> None:
    """Add secrets (a client's, a websocket feed's credentials) to those redacted from the filtered loggers."""
    install_log_filter().add(frozenset(s for s in secrets if s))


def redact_registered(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    redact = _FILTER.redactor()
    return redact(text) if redact.secrets else text


def registered_secrets() -> frozenset[str]:
    """Every secret registered so far (for filters that must also catch pieces of them)."""
    return _FILTER.redactor().secrets


__all__ = [
    "CREDENTIAL_PARAMS",
    "REDACTED",
    "Redactor",
    "SecretLogFilter",
    "install_log_filter",
    "redact_registered",
    "register_secrets",
    "registered_secrets",
]
