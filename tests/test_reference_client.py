"""The course's reference Pi client against a real server on loopback: its exact request, its reading
of the reply (``e`` -> the ``label_idx`` record -> ``int(v)`` -> the course label order), on real
test-split clips; ``--spec-labels`` changing only the index; a bad order refused at startup; and our
edge transport reading both our reply and the reference service's."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from edge.transports import RestSpecTransport, RetryPolicy
from kws_rpc.audio.wav import read_wav
from kws_rpc.lab.data import LABELS
from kws_rpc.model.kws_model import KwsModel
from kws_rpc.serving.server import ServerConfig, ServerHandle, parse_args, serve
from kws_rpc.wire.senml import COURSE_LABELS, check_label_order, label_from_reply, parse_label_order, spec_reply
from tests.support.reference_service import REPLY, ReferenceService

REPO = Path(__file__).resolve().parent.parent
# Written out here, not imported: the reference client has its own copy of this order.
COURSE = ["down", "stop", "right", "left", "up", "yes", "no", "go"]
ALPHABETICAL = tuple(sorted(COURSE))


def reference_client(url: str, wav: bytes, order: list[str] | tuple[str, ...] = COURSE) -> list[str]:
    """What the reference client prints for one clip, line by line: its body, built its way, sent its way
    (``data=`` a str: no content type; no timeout, pytest-timeout bounds the test), and its reading of the
    reply: every record of ``e`` prints its label if it is ``label_idx``, else ``Error``."""
    body = {"bn": "http://192.168.1.20/", "bt": int(time.time()),
            "e": [{"n": "audio", "u": "/", "t": 0, "vd": base64.b64encode(wav).decode("utf-8")}]}
    r = requests.put(url, data=json.dumps(body))
    printed = []
    for record in r.json()["e"]:
        if record["n"] == "label_idx":
            printed.append(order[int(record["v"])])
        else:
            printed.append("Error")
    return printed


def start(model: Path, spec_labels: tuple[str, ...] = COURSE_LABELS) -> ServerHandle:
    return serve(ServerConfig(models=(model,), gateway_port=0, spec_labels=spec_labels))


@pytest.fixture(scope="module")
def server(served_model_path: Path) -> Iterator[ServerHandle]:
    handle = start(served_model_path)
    yield handle
    handle.stop(grace=1)


@pytest.fixture(scope="module")
def url(server: ServerHandle) -> str:
    assert server.gateway is not None
    return server.gateway.url + "/"


@pytest.fixture(scope="module")
def clips(test_audio: tuple[np.ndarray, np.ndarray, list[str]], dataset_root: Path) -> list[tuple[str, str, bytes]]:
    """Every 4th test clip (200, all 8 words): (name, true word, the WAV file's bytes as recorded)."""
    _, labels, names = test_audio
    root = dataset_root / "mini_speech_commands"
    return [(n, LABELS[int(y)], (root / n).read_bytes()) for n, y in list(zip(names, labels))[::4]]


def v1_label(url: str, wav: bytes) -> str:
    r = requests.post(url + "v1/predict", json={"audio": {"wav": base64.b64encode(wav).decode()}}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["prediction"]["label"]


def test_reference_client_on_test_clips(url: str, clips: list[tuple[str, str, bytes]]) -> None:
    assert len(clips) >= 100 and {word for _, word, _ in clips} == set(COURSE)
    printed = [reference_client(url, wav) for _, _, wav in clips]
    assert all(len(lines) == 1 and lines != ["Error"] for lines in printed), printed
    got = [lines[0] for lines in printed]
    assert got == [v1_label(url, wav) for _, _, wav in clips]  # the same answers as the proto API
    accuracy = np.mean([g == word for g, (_, word, _) in zip(got, clips)])
    assert accuracy >= 0.90, accuracy


def test_reply_is_the_reference_shape(url: str, clip_wavs: dict[str, bytes], served_model_path: Path) -> None:
    labels = KwsModel(served_model_path).labels
    body = {"bn": "0xabc", "bt": 1_700_000_000,
            "e": [{"n": "audio", "u": "/", "t": 0, "vd": base64.b64encode(clip_wavs["left"]).decode()}]}
    out = requests.put(url, data=json.dumps(body), timeout=30).json()
    assert (out["bn"], out["bt"]) == ("0xabc", 1_700_000_000)
    assert out["e"] == [{"n": "label_idx", "u": "/", "t": 0, "v": "3"}]  # left is 3 in the course order
    assert out["label"] == "left" and set(out["probabilities"]) == set(labels)  # kws's fields beside it
    docs = requests.get(url + "openapi.json", timeout=10).json()
    assert "--spec-labels" in docs["info"]["description"] and "label_idx" in docs["info"]["description"]
    assert ",".join(COURSE) in docs["info"]["description"]


def test_spec_labels_only_change_the_index(url: str, served_model_path: Path,
                                           clips: list[tuple[str, str, bytes]]) -> None:
    alt = start(served_model_path, ALPHABETICAL)
    try:
        assert alt.gateway is not None
        for i, (name, _, wav) in enumerate(clips[::5]):
            body = json.dumps({"bn": name, "bt": i, "e": [{"n": "audio", "u": "/", "t": 0,
                                                           "vd": base64.b64encode(wav).decode()}]})
            ours, theirs = (requests.put(u, data=body, headers={"X-Request-Id": f"r{i}"}, timeout=30).json()
                            for u in (url, alt.gateway.url + "/"))
            assert COURSE[int(ours["e"][0]["v"])] == ALPHABETICAL[int(theirs["e"][0]["v"])] == ours["label"]
            assert {k: v for k, v in ours.items() if k != "e"} == {k: v for k, v in theirs.items() if k != "e"}
            assert theirs["e"] == [{"n": "label_idx", "u": "/", "t": 0, "v": str(ALPHABETICAL.index(ours["label"]))}]
        assert reference_client(alt.gateway.url + "/", clips[0][2], ALPHABETICAL) == [clips[0][1]]
    finally:
        alt.stop(grace=1)


def test_bad_spec_labels_are_refused_at_startup(served_model_path: Path, capsys: pytest.CaptureFixture) -> None:
    name = KwsModel(served_model_path).name
    with pytest.raises(ValueError, match=rf"no index for go, a label of model '{name}'"):
        start(served_model_path, tuple(COURSE[:-1]))
    for bad, words in ((",".join(COURSE + ["up"]), "up more than once"), ("down,,stop", "empty name")):
        with pytest.raises(SystemExit):
            parse_args(["--model", str(served_model_path), "--spec-labels", bad])
        assert words in capsys.readouterr().err
    no_go = ",".join(COURSE[:-1])
    proc = subprocess.run([sys.executable, "-m", "kws_rpc.serving.server", "--model", str(served_model_path),
                           "--gateway-port", "0", "--spec-labels", no_go],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "kws-server: error: --spec-labels" in proc.stderr and "no index for go" in proc.stderr, proc.stderr


def test_superset_order_is_accepted() -> None:
    order = parse_label_order(" _silence_, _unknown_," + ",".join(ALPHABETICAL))
    check_label_order(order, list(LABELS), "big")
    assert spec_reply("down", order, {"bn": "x"}) == {"bn": "x", "e": [{"n": "label_idx", "u": "/", "t": 0, "v": "2"}]}


def test_standalone_gateway_spec_labels(server: ServerHandle, clip_wavs: dict[str, bytes]) -> None:
    order = ("_silence_", "_unknown_", *ALPHABETICAL)
    cmd = [sys.executable, "-m", "kws_rpc.serving.gateway", "--grpc-target", server.target, "--port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    bad = subprocess.run([*cmd, "--spec-labels", "down,stop"], cwd=REPO, capture_output=True, text=True,
                         env=env, timeout=60)
    assert bad.returncode == 2 and "no index for go" in bad.stderr, bad.stderr
    proc = subprocess.Popen([*cmd, "--spec-labels", ",".join(order)], cwd=REPO, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if m := re.search(r"Uvicorn running on (http://[\d.]+:\d+)", line):
                break
        assert reference_client(m.group(1) + "/", clip_wavs["no"], order) == ["no"]
    finally:
        proc.terminate()
        assert proc.wait(15) in (0, -signal.SIGTERM)


@pytest.mark.parametrize("reply, label", [
    (REPLY, "left"),
    ({"e": [{"n": "label_idx", "v": 7}]}, "go"),
    ({"e": [{"n": "temperature", "v": 3}]}, None),
    ({"e": [{"n": "label_idx", "v": "8"}]}, None),
])
def test_edge_reads_the_reference_service(reply: dict, label: str | None) -> None:
    with ReferenceService(reply) as url:
        audio, _ = read_wav(str(REPO / "tests" / "fixtures" / "clips" / "left.wav"))
        t = RestSpecTransport(url, "0xabc", RetryPolicy(retries=0))
        answer = t.ask(np.pad(audio, (0, 16000 - len(audio)))[:16000], "left/x.wav")
        assert answer.label == label and (label is not None or answer.attempts == 1), answer
        assert answer.score is None  # the reference reply carries no probability


def test_edge_reads_our_reply(url: str) -> None:
    audio, _ = read_wav(str(REPO / "tests" / "fixtures" / "clips" / "up.wav"))
    t = RestSpecTransport(url, "0xabc", RetryPolicy(timeout_s=30))
    answer = t.ask(np.pad(audio, (0, 16000 - len(audio)))[:16000], "up/x.wav")
    assert answer.label == "up" and 0.5 < answer.score <= 1  # ours carries the label's probability
    assert label_from_reply({"label": "yes", "e": [{"n": "label_idx", "v": "0"}]}) == "yes"  # ours wins
    assert label_from_reply({"e": [{"n": "label_idx", "v": "0"}]}, ALPHABETICAL) == "down"
