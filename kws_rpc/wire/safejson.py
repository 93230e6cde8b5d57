"""JSON from untrusted bodies, with limits checked before Python's parser runs.

``json.loads`` recurses once per nesting level (``'[' * 200000`` is a RecursionError, a 500), turns a
5,000-digit number into a ValueError from int(), and accepts ``NaN``, ``Infinity`` and ``1e999`` (not
JSON: they came back as ``null``). ``loads`` refuses each with InvalidInput. The nesting depth is
measured without recursion: escapes removed, strings masked, brackets counted with numpy.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from kws_rpc.errors import InvalidInput

MAX_DEPTH = 32  # a SenML body nests 3 deep, a PredictRequest 4
MAX_NUMBER_CHARS = 40  # an int64 has at most 20 characters, a float's shortest repr 24

_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_OTHER = bytes(c for c in range(256) if c not in b'"[]{}')  # deleted before counting (fast, in C)
_STEP = np.zeros(256, np.int32)  # +1 for an opening bracket, -1 for a closing one
_STEP[list(b"[{")], _STEP[list(b"]}")] = 1, -1


def nesting_depth(body: bytes) -> int:
    """The deepest bracket nesting outside strings. Never below what json.loads reaches before it stops
    (a stray backslash outside a string stops the parser there, and this count includes that prefix)."""
    b = np.frombuffer(_ESCAPE.sub(b"", body).translate(None, _OTHER), np.uint8)
    if not b.size:
        return 0
    outside = np.cumsum(b == ord('"'), dtype=np.int32) % 2 == 0
    return int(np.cumsum(_STEP[b] * outside, dtype=np.int32).max(initial=0))


def _number(kind: type) -> Any:
    def parse(text: str) -> Any:
        if len(text) > MAX_NUMBER_CHARS:
            raise InvalidInput(f"a number of {len(text)} characters; at most {MAX_NUMBER_CHARS} are accepted")
        value = kind(text)
        if kind is float and not np.isfinite(value):
            raise InvalidInput(f"number {text} is out of range: it overflows a float")
        return value
    return parse


def _constant(name: str) -> Any:
    raise InvalidInput(f"{name} is not a JSON value (RFC 8259 has no NaN or Infinity)")


def loads(body: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """json.loads with nesting, number size and non-finite numbers refused (InvalidInput); a body that is
    not JSON raises json.JSONDecodeError or UnicodeDecodeError as json.loads does."""
    text = body if isinstance(body, str) else bytes(body).decode(json.detect_encoding(body), "surrogatepass")
    if (depth := nesting_depth(text.encode("utf-8", "surrogatepass"))) > max_depth:
        raise InvalidInput(f"JSON nested {depth} levels deep; at most {max_depth} are accepted")
    return json.loads(text, parse_int=_number(int), parse_float=_number(float), parse_constant=_constant)
