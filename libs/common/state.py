"""The JetStream objects the fabric needs: the event stream and the KV buckets (DESIGN §3-§4).

Created once by the supervisor (as the admin identity); services only read and write them,
their permissions do not allow creating or deleting streams.
"""

from __future__ import annotations

from typing import Final

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig

from libs.common.ids import BUCKET_OWNERS, EVENTS_STREAM, EVENTS_SUBJECTS

EVENTS_MAX_AGE_S: Final = 7 * 24 * 3600
EVENTS_MAX_BYTES: Final = 512 * 1024 * 1024


async def ensure_state(js: JetStreamContext) -> None:
    """Create the event stream and every bucket if missing; idempotent."""
    try:
        await js.stream_info(EVENTS_STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=EVENTS_STREAM,
                subjects=[EVENTS_SUBJECTS],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=EVENTS_MAX_AGE_S,
                max_bytes=EVENTS_MAX_BYTES,
            )
        )
    for bucket in sorted(BUCKET_OWNERS):
        try:
            await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            await js.create_key_value(
                KeyValueConfig(bucket=bucket, history=5, storage=StorageType.FILE, direct=True)
            )
