"""The reference wire format: a SenML+JSON (RFC 8428) body carrying one clip as a base64 WAV file.

The edge builds it (``spec_body_for_wav``), the gateway parses it (``wav_from_senml``), and the cost rule
is the reference's (``spec_bytes``): one module, so both ends agree by construction.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from kws_rpc.errors import InvalidInput

SENML_HINT = 'send {"bn": ..., "bt": ..., "e": [{"n": "audio", "vd": "<base64 of a 16-bit mono WAV>"}]}'


def spec_body_for_wav(wav: bytes, device: str, timestamp: int | None = None) -> dict[str, Any]:
    """The reference SenML+JSON request around the bytes of a WAV file."""
    return {"bn": device, "bt": int(time.time() if timestamp is None else timestamp),
            "e": [{"n": "audio", "u": "/", "t": 0, "vd": base64.b64encode(wav).decode("ascii")}]}


def spec_bytes(body: dict[str, Any]) -> int:
    """The reference's cost rule: the length of json.dumps(body), exactly what requests.put sends."""
    return len(json.dumps(body))


def wav_from_senml(body: bytes) -> tuple[bytes, dict[str, Any]]:
    """The WAV bytes of the audio record, and the base record fields (bn, bt) to echo."""
    if not body.strip():
        raise InvalidInput(f"empty body: {SENML_HINT}")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"body is not JSON ({e}): {SENML_HINT}") from None
    records = doc.get("e") if isinstance(doc, dict) else doc
    base = doc if isinstance(doc, dict) else (doc[0] if isinstance(doc, list) and doc else {})
    base = base if isinstance(base, dict) else {}
    if not isinstance(records, list):
        raise InvalidInput(f'no SenML record list ("e"): {SENML_HINT}')
    audio = [r for r in records if isinstance(r, dict) and r.get("n") == "audio"]
    if not audio or not isinstance(audio[0].get("vd"), str):
        raise InvalidInput(f'no audio record with a "vd" string: {SENML_HINT}')
    try:
        wav = base64.b64decode(audio[0]["vd"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f'"vd" is not valid base64 ({e}): encode the WAV file bytes with base64') from None
    return wav, {k: base[k] for k in ("bn", "bt") if k in base}
