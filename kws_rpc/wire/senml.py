"""The reference wire format: a SenML+JSON (RFC 8428) body carrying one clip as a base64 WAV file.

The edge builds it (``spec_body_for_wav``), the gateway parses it (``wav_from_senml``), and the cost rule
is the reference's (``spec_bytes``): one module, so both ends agree by construction.

The reply is the reference service's too (``spec_reply``): ``bn`` and ``bt`` echoed and one record
``{"n": "label_idx", "u": "/", "t": 0, "v": "<index>"}``, the index (a string) of the label in an order
the server is given (``--spec-labels``, default the course's ``COURSE_LABELS``), which is not the models'
alphabetical order. The reference client reads only that record; ``label_from_reply`` reads either reply.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from kws_rpc.errors import InvalidInput, quote
from kws_rpc.wire import safejson

# The label order of the course's reference client and service: label_idx indexes this tuple.
COURSE_LABELS: tuple[str, ...] = ("down", "stop", "right", "left", "up", "yes", "no", "go")
# The servers' default --spec-labels: the course's order, then the listening models' rejections, so the
# spec body reaches those models too (?model=big_listen_int8). The course's client asks the clip model,
# which answers only the first eight: its indices are the course's.
SPEC_LABELS: tuple[str, ...] = (*COURSE_LABELS, "_silence_", "_unknown_")

SENML_HINT = 'send {"bn": ..., "bt": ..., "e": [{"n": "audio", "vd": "<base64 of a 16-bit mono WAV>"}]}'
MAX_BN_CHARS = 256  # bn and bt are echoed in the reply: a device name, a time in seconds
MAX_BT = 2.0 ** 53  # beyond this a JSON number is not an exact integer in JavaScript


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
        doc = safejson.loads(body)
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
    return wav, echoed_base(base)


def echoed_base(base: dict[str, Any]) -> dict[str, Any]:
    """The base name and time to echo, checked before any inference runs: ``bn`` a string (valid Unicode:
    a lone surrogate cannot be encoded in the reply), ``bt`` a finite number (RFC 8428)."""
    out = {k: base[k] for k in ("bn", "bt") if k in base}
    bn, bt = out.get("bn", ""), out.get("bt", 0)
    if not isinstance(bn, str) or len(bn) > MAX_BN_CHARS:
        raise InvalidInput(f'"bn" must be a string of at most {MAX_BN_CHARS} characters (the device name), '
                           f"got {quote(bn, 40)}")
    try:
        bn.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f'"bn" {quote(bn, 40)} is not valid Unicode (a lone UTF-16 surrogate)') from None
    if isinstance(bt, bool) or not isinstance(bt, (int, float)) or not abs(bt) <= MAX_BT:
        raise InvalidInput(f'"bt" must be a number of seconds within +-2**53, got {quote(bt, 40)}')
    return out


def parse_label_order(text: str) -> tuple[str, ...]:
    """A ``--spec-labels`` value: comma-separated label names, each once."""
    return validate_label_order(tuple(n.strip() for n in text.split(",")))


def validate_label_order(order: tuple[str, ...]) -> tuple[str, ...]:
    """``order`` itself, if every name in it is non-empty and appears once (else ValueError)."""
    if not order or "" in order:
        raise ValueError(f"--spec-labels {','.join(order)!r} has an empty name: give comma-separated label "
                         f"names, e.g. {','.join(COURSE_LABELS)}")
    if repeated := sorted({n for n in order if order.count(n) > 1}):
        raise ValueError(f"--spec-labels {','.join(order)!r} lists {', '.join(repeated)} more than once")
    return order


def check_label_order(order: tuple[str, ...], labels: list[str], model: str) -> None:
    """Every label the model can answer needs an index; extra names in ``order`` are allowed."""
    if missing := [x for x in labels if x not in order]:
        raise ValueError(f"--spec-labels {','.join(order)} has no index for {', '.join(missing)}, a label of "
                         f"model {model!r} (labels {','.join(labels)}): list every label of the model")


def spec_reply(label: str, order: tuple[str, ...], base: dict[str, Any]) -> dict[str, Any]:
    """The reference service's reply: the request's bn/bt and one label_idx record (index as a string)."""
    if label not in order:
        raise ValueError(f"label {label!r} has no index in --spec-labels {','.join(order)}")
    return {**base, "e": [{"n": "label_idx", "u": "/", "t": 0, "v": str(order.index(label))}]}


def label_from_reply(reply: Any, order: tuple[str, ...] = COURSE_LABELS) -> str:
    """The label in a reply to the spec body: kws's top-level ``label``, else the reference's label_idx
    record mapped through ``order``. A reply with neither raises ValueError."""
    if isinstance(reply, dict) and isinstance(reply.get("label"), str):
        return reply["label"]
    records = reply.get("e") if isinstance(reply, dict) else None
    for r in records if isinstance(records, list) else []:
        if isinstance(r, dict) and r.get("n") == "label_idx":
            try:
                index = int(r["v"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"label_idx record without an integer \"v\": {r}") from None
            if not 0 <= index < len(order):
                raise ValueError(f"label_idx {index} is outside the label order {','.join(order)}")
            return order[index]
    raise ValueError('the reply has neither a "label" nor an "e" record named "label_idx"')
