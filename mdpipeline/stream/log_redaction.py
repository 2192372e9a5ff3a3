"""Secrets out of the websocket library's logs.

`websockets` logs the opening request (`> GET /?token=... HTTP/1.1`, Finnhub's token) and every frame
sent or received (`> TEXT '{"action": "auth", "key": ..., "secret": ...}'`, Alpaca's credentials) at
DEBUG, frames cut after `WEBSOCKETS_MAX_LOG_SIZE` characters, so a secret may appear only in part.
A filter on its loggers (and on the collector's) replaces, in the message and in any traceback:
- every secret a feed registered (`protect`), whole or URL-encoded (`mdpipeline.providers.http`), and
  any piece of one of 8 characters or more (the library cuts long frames in the middle: `...`);
- the value of a `token`/`apikey`/`key`/`secret` query parameter, and of a JSON member named `key`,
  `secret`, `token` or `apikey`, up to its closing quote or, when cut, to the end of the message;
- the whole payload of a logged frame that names such a member (`> TEXT '{"action": "auth", ...}'`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from mdpipeline.providers.http import REDACTED, redact_registered, register_secrets, registered_secrets

LOGGERS = ("websockets.client", "websockets.server", "websockets", "mdpipeline.stream.collector")
_QUERY = re.compile(r"(?i)([?&](?:token|apikey|api_key|key|secret)=)[^&\s'\"]*")
_JSON = re.compile(r"""(?i)(["'](?:key|secret|token|apikey|api_key|password)["']\s*:\s*["'])[^"']*""")
# websockets' frame lines: `> TEXT '<payload>' [96 bytes]`; a payload naming a credential member goes whole.
_FRAME = re.compile(r"""(?is)^([<>] (?:TEXT|BINARY|CONT) )(['"]).*(["'](?:key|secret|token|apikey|password)["']).*\2""")
PIECE = 8  # characters of a secret that count as leaking it


def redact(text: str) -> str:
    """`text` without registered secrets (or pieces of them) and without credential-shaped values."""
    clean = _FRAME.sub(rf"\g<1>'{REDACTED} (a frame with credentials)'", redact_registered(text))
    clean = _JSON.sub(rf"\g<1>{REDACTED}", _QUERY.sub(rf"\g<1>{REDACTED}", clean))
    for secret in registered_secrets():
        for i in range(len(secret) - PIECE + 1):
            piece = secret[i:i + PIECE]
            if piece in clean:
                clean = clean.replace(piece, REDACTED)
    return clean


class WebsocketSecretFilter(logging.Filter):
    """Redacts a record's message (and its traceback text) before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


_FILTER = WebsocketSecretFilter()


def protect(secrets: Sequence[str] = ()) -> None:
    """Register `secrets` and make sure the websocket loggers are filtered (idempotent)."""
    register_secrets(secrets)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


protect()
