"""The loop every kernel-owning agent runs: apply the desired state when it changes, look for
drift when it does not, and keep the previous state in force when applying fails.

    reconcile_forever(changed, apply, check_drift, ...)
      ├── `changed` set             → apply() (it clears `changed` itself, then compiles and applies)
      ├── quiet for `drift_s`       → check_drift()
      └── apply() raises            → log, `failed()` (e.g. "compile everything next time"), retry
                                      with capped exponential backoff
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from libs.common.errors import QnfError

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0


async def reconcile_forever(
    changed: asyncio.Event,
    apply: Callable[[], Awaitable[Any]],
    check_drift: Callable[[], Awaitable[None]],
    *,
    drift_s: float,
    failed: Callable[[], None],
    log: logging.Logger,
    what: str,
) -> None:
    delay = RETRY_FIRST_S
    while True:
        try:
            await asyncio.wait_for(changed.wait(), drift_s)
        except TimeoutError:
            await check_drift()
            continue
        try:
            await apply()
            delay = RETRY_FIRST_S
        except Exception as exc:  # a compiler bug included: keep the loop, keep the old state
            if isinstance(exc, QnfError):
                log.error("applying %s failed (the previous one stays in force): %s", what, exc)
            else:
                log.exception("compiling %s failed (the previous one stays in force)", what)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
            failed()
            changed.set()
