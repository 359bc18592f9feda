"""JSON for the plugin's exec path, straight from CPython's C accelerator (`_json`).

`import json` costs ~8 ms per exec here because its pure-Python wrapper imports `re` (and with it
enum and functools); the runtime execs the plugin once per container. `_json` is the same C
scanner and encoder that `json` itself uses, without the wrapper. If it is missing (another
Python implementation), the standard module is used.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:
    import _json
except ImportError:  # pragma: no cover - not CPython
    _json = None  # type: ignore[assignment]


class _DecoderSettings:
    """The attributes `_json.make_scanner` reads from a JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, Any] = {}  # noqa: RUF012 - read by the C scanner, never mutated here

    @staticmethod
    def parse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")


def _reject(obj: Any) -> Any:
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def loads(data: bytes | str) -> Any:
    """Parse one JSON document; ValueError if it is not exactly that."""
    if _json is None:  # pragma: no cover
        import json

        return json.loads(data)
    text = data.decode() if isinstance(data, bytes) else data
    text = text.strip(" \t\r\n")
    try:
        value, end = _json.make_scanner(_DecoderSettings)(text, 0)  # type: ignore[arg-type]
    except (StopIteration, ValueError, SystemError):
        # Bad input. The C scanner builds its error through json.decoder, which can fail under
        # `python -I -S`; the full module gives the precise message (off the hot path).
        import json

        return json.loads(text)
    if end != len(text):
        raise ValueError(f"extra data at offset {end}")
    return value


def dumps(value: Any) -> str:
    """Compact JSON text."""
    if _json is None:  # pragma: no cover
        import json

        return json.dumps(value, separators=(",", ":"))
    encode = _json.make_encoder(
        None, _reject, _json.encode_basestring_ascii, None, ":", ",", False, False, True
    )
    return "".join(encode(value, 0))
