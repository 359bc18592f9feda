"""Structured logs: one JSON object per line on stderr, with the service and node on each line."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final

_STANDARD: Final = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Renders a record and its `extra=` fields as one JSON line."""

    def __init__(self, **static: str) -> None:
        super().__init__()
        self._static = static

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self._static,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class _DropSslEofNoise(logging.Filter):
    # asyncio logs this on every TLS connection close; it says nothing about the fabric.
    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received()" not in record.getMessage()


def setup_logging(level: str, **static: str) -> None:
    """Route the root logger to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(**static))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("asyncio").addFilter(_DropSslEofNoise())
    logging.Formatter.converter = time.gmtime
