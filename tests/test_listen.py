"""The Pi listening: streaming features equal whole-clip features, the detector's rules, the audio sources
(WAV of any rate, raw PCM on stdin, a microphone through PortAudio) and `kws-edge listen` as a user runs it."""

from __future__ import annotations

import dataclasses

import io
import json
import re
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from edge.sources import SourceError, SourceStats, microphone, raw_stream, wav_file
from edge.stream import DetectorConfig, Detector, FrameStream, Listener
from kws_rpc.audio.features import FeatureConfig, log_mel
from kws_rpc.model.kws_model import KwsModel

REPO = Path(__file__).resolve().parent.parent
HOP10 = FeatureConfig(num_mfcc=0, upper_hz=7600.0, frame_length=480, frame_step=160, fft_length=512)


def write_wav(path: Path, audio: np.ndarray, rate: int = 16000, width: int = 2, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes() if width == 2 else bytes(len(audio)))
    return path


@pytest.fixture(scope="module")
def little() -> KwsModel:
    return KwsModel(REPO / "models" / "little.tflite")


@pytest.fixture(scope="module")
def keyword_stream(test_audio) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Six test clips the little gets right, with 1-2 s of silence before each: (audio, [(clip end, label)])."""
    from kws_rpc.model.card import LABELS

    audio, labels, _ = test_audio
    rng = np.random.default_rng(3)
    parts, truth, t = [], [], 0.0
    for i in rng.choice(len(audio), 6, replace=False):
        gap = np.zeros(int(16000 * rng.uniform(1.0, 2.0)), np.float32)
        parts += [gap, audio[i]]
        t += (len(gap) + len(audio[i])) / 16000
        truth.append((t, LABELS[labels[i]]))
    return np.concatenate(parts), truth


@pytest.mark.parametrize("block", [1, 160, 1000, 1600, 4321])
def test_stream_frames_are_the_clip_features_of_every_window(block: int) -> None:
    x = (np.random.default_rng(0).standard_normal(16000 * 3) * 0.1).astype(np.float32)
    fs = FrameStream(HOP10)
    frames = np.concatenate([fs.push(x[i : i + block]) for i in range(0, len(x), block)])
    assert fs.frames == len(frames) == 1 + (len(x) - 480) // 160
    for start in (0, 13, 100, 200):
        np.testing.assert_allclose(frames[start : start + 98], log_mel(x[start * 160 : start * 160 + 16000], HOP10),
                                   atol=1e-5)


def test_a_stream_cannot_use_per_clip_peak_normalization() -> None:
    with pytest.raises(ValueError, match="peak-normalized"):
        FrameStream(FeatureConfig(num_mfcc=0, peak_normalize=0.5))


def test_detector_smooths_waits_for_patience_and_keeps_a_refractory_period() -> None:
    labels = ["yes", "no", "_silence_", "_unknown_"]
    d = Detector(labels, DetectorConfig(smooth=2, threshold=0.6, patience=2, refractory_s=1.0))
    yes, unk = np.array([0.9, 0.1, 0, 0]), np.array([0, 0, 0, 1.0])
    assert d.update(unk, 0.0) is None
    assert d.update(yes, 0.1) is None  # smoothed 0.45: below the threshold
    assert d.update(yes, 0.2) is None  # 0.9, first hop of patience
    fired = d.update(yes, 0.3)
    assert fired == ("yes", pytest.approx(0.9))
    assert all(d.update(yes, t) is None for t in (0.4, 0.8, 1.2))  # refractory until 1.3
    assert d.update(yes, 1.3) == ("yes", pytest.approx(0.9))
    d2 = Detector(labels, DetectorConfig(smooth=1, threshold=0.5))
    assert d2.update(unk, 0.0) is None  # a rejection label never fires, however sure


def test_listener_finds_each_keyword_near_its_clip_with_its_label(little, keyword_stream) -> None:
    audio, truth = keyword_stream
    lis = Listener(little, DetectorConfig(threshold=0.5))
    found = [d for i in range(0, len(audio), 1234) for d in lis.push(audio[i : i + 1234])]
    assert lis.windows == int(lis.seconds * 10) or abs(lis.windows - lis.seconds * 10) <= 1
    hits = 0
    for end, label in truth:
        near = [d for d in found if end - 1.0 <= d.t <= end + 0.5]
        hits += any(d.label == label for d in near)
    assert hits >= 5, (found, truth)
    for d in found:  # the audio a detection carries is the second that ends at its time
        end = round(d.t * 16000)
        np.testing.assert_array_equal(d.audio[-min(end, 16000):], audio[max(0, end - 16000) : end])


def test_wav_file_of_another_rate_is_resampled_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    t = np.arange(44100 * 2) / 44100
    path = write_wav(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 440 * t), rate=44100)
    stats = SourceStats()
    x = np.concatenate(list(wav_file(path, 16000, stats)))
    assert abs(len(x) - 32000) <= 2 and stats.seconds == pytest.approx(2.0, abs=1e-3)
    spectrum = np.abs(np.fft.rfft(x[1000:17000]))
    assert abs(np.argmax(spectrum) - 440) <= 1  # the tone stays at 440 Hz
    with pytest.raises(SourceError, match="header says 44100 Hz but --rate says 16000"):
        list(wav_file(path, 16000, SourceStats(), rate=16000))
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(SourceError, match="not a PCM WAV file"):
        list(wav_file(tmp_path / "bad.wav", 16000, SourceStats()))
    stereo = write_wav(tmp_path / "st.wav", np.zeros(3200), channels=2)
    with pytest.raises(SourceError, match="mono 16-bit"):
        list(wav_file(stereo, 16000, SourceStats()))


def test_raw_stream_keeps_odd_bytes_across_reads_and_counts_one_left_at_the_end() -> None:
    pcm = (np.arange(1000, dtype="<i2") * 7).tobytes() + b"\x01"

    class Trickle(io.RawIOBase):  # reads that end mid-sample
        def __init__(self) -> None:
            self.data = pcm

        def read(self, n: int = -1) -> bytes:
            chunk, self.data = self.data[:333], self.data[333:]
            return chunk

    stats = SourceStats()
    x = np.concatenate(list(raw_stream(Trickle(), 16000, 16000, stats)))
    np.testing.assert_array_equal(np.round(x * 32768).astype(int), np.arange(1000) * 7)
    assert stats.odd_bytes == 1 and stats.lost


def run_listen(*args: str, stdin: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", "listen", *args], cwd=REPO, input=stdin, capture_output=True,
                          timeout=120, env={**os.environ, **(env or {})})


def events(r: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in r.stdout.decode().splitlines()]


def test_listen_reads_a_wav_and_stdin_alike_and_prints_json_events(tmp_path: Path, keyword_stream) -> None:
    audio, truth = keyword_stream
    path = write_wav(tmp_path / "stream.wav", audio)
    by_file = run_listen("--input", str(path))
    assert by_file.returncode == 0, by_file.stderr.decode()[-2000:]
    found = events(by_file)
    assert len(found) >= 4 and {e["decided_by"] for e in found} == {"little"}
    assert all(set(e) >= {"t", "label", "score", "decided_by"} for e in found)
    assert "no audio lost" in by_file.stderr.decode()
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    by_stdin = run_listen("--input", "-", stdin=pcm)
    assert by_stdin.returncode == 0 and events(by_stdin) == found
    odd = run_listen("--input", "-", stdin=pcm + b"\x00")
    assert odd.returncode == 1 and events(odd) == found
    assert "odd trailing byte" in odd.stderr.decode()


def test_listen_refuses_a_bad_wav_and_a_rate_that_does_not_match(tmp_path: Path) -> None:
    (tmp_path / "bad.wav").write_bytes(b"not a wav at all")
    r = run_listen("--input", str(tmp_path / "bad.wav"))
    assert r.returncode == 2 and b"not a PCM WAV file" in r.stderr and b"Traceback" not in r.stderr
    good = write_wav(tmp_path / "g.wav", np.zeros(8000), rate=8000)
    r = run_listen("--input", str(good), "--rate", "16000")
    assert r.returncode == 2 and b"--rate says 16000" in r.stderr


def test_listen_says_so_when_its_input_holds_no_audio(tmp_path: Path) -> None:
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0))
    for r in (run_listen("--input", str(empty)), run_listen("--input", "-", stdin=b"")):
        err = r.stderr.decode()
        assert r.returncode == 2 and "held no audio" in err and "(no audio)" in err and "Traceback" not in err
        assert not events(r)


ASOUNDRC = """pcm.kwsmic {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
    hint {{ show on description "kws test microphone: a raw file" }}
}}
"""


def alsa_file_microphone(tmp_path: Path, audio: np.ndarray) -> dict[str, str]:
    """An ALSA capture device that plays a raw file, opened through PortAudio like a real microphone."""
    pytest.importorskip("sounddevice", reason="sounddevice (the edge extra) is not installed")
    infile = tmp_path / "mic.raw"
    infile.write_bytes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    rc = tmp_path / "asoundrc"
    rc.write_text(ASOUNDRC.format(infile=infile))
    alsa = Path("/usr/share/alsa/alsa.conf")
    if not alsa.is_file():
        pytest.skip("no ALSA configuration (apt-get install libasound2)")
    return {"ALSA_CONFIG_PATH": f"{alsa}:{rc}"}


def test_listen_hears_a_microphone_through_portaudio(tmp_path: Path, keyword_stream) -> None:
    # ALSA's file device delivers its audio as fast as it is read, not in real time: a buffer as long as the
    # input keeps all of it in order; a short one overflows, and says so.
    audio, truth = keyword_stream
    env = alsa_file_microphone(tmp_path, audio)
    try:
        import sounddevice  # noqa: F401
    except OSError:
        pytest.skip("libportaudio2 is not installed (apt-get install libportaudio2)")
    seconds = f"{len(audio) / 16000:.2f}"
    r = run_listen("--input", "mic", "--device", "kwsmic", "--rate", "16000", "--duration", seconds,
                   "--buffer", "60", env=env)
    err = r.stderr.decode()
    assert "listening to kwsmic at 16000 Hz" in err, err[-2000:]
    wav = run_listen("--input", str(write_wav(tmp_path / "same.wav", audio)))
    assert [e["label"] for e in events(r)] == [e["label"] for e in events(wav)]
    short = run_listen("--input", "mic", "--device", "kwsmic", "--rate", "16000", "--duration", seconds,
                       "--buffer", "0.2", env=env)
    assert short.returncode == 1 and "microphone overflow" in short.stderr.decode()
    assert "microphone overflows" in short.stderr.decode().splitlines()[-1]


def test_a_microphone_that_is_not_there_is_retried_and_counted_until_stopped(tmp_path: Path) -> None:
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):
        pytest.skip("sounddevice with libportaudio2 is not installed")
    stats, stop = SourceStats(), threading.Event()
    timer = threading.Timer(1.5, stop.set)
    timer.start()
    assert list(microphone("no such microphone", 16000, stats, stop, retry_s=0.2)) == []
    assert stats.reopens >= 3 and stats.lost


def test_classify_names_the_word_of_each_fixture_clip_and_reports_unreadable_files(tmp_path: Path) -> None:
    clips = sorted((REPO / "tests" / "fixtures" / "clips").glob("*.wav"))
    stereo = write_wav(tmp_path / "stereo.wav", np.zeros(1600), channels=2)
    r = subprocess.run([sys.executable, "-m", "edge.cli", "classify", *map(str, clips), str(stereo)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    lines = [ln.split("\t") for ln in r.stdout.splitlines()]
    assert [Path(p).stem for p, _, _ in lines] == [c.stem for c in clips]
    assert sum(Path(p).stem == label for p, label, _ in lines) >= len(clips) - 1
    assert "stereo.wav" in r.stderr and "mono 16-bit" in r.stderr and "1 of 9 files" in r.stderr


def test_classify_scans_a_long_file_for_its_keyword(tmp_path: Path, little) -> None:
    from edge.classify import classify_file
    from kws_rpc.audio.wav import read_wav

    left, _ = read_wav(str(REPO / "tests" / "fixtures" / "clips" / "left.wav"))
    audio = np.concatenate([np.zeros(16000 * 3, np.float32), left, np.zeros(8000, np.float32)])
    v = classify_file(little, str(write_wav(tmp_path / "long.wav", audio, rate=16000)), 60)
    assert v.label == "left" and v.seconds == pytest.approx(4.5)
    assert 3.5 <= v.window_end_s <= 4.5
    with pytest.raises(SourceError, match="longer than"):
        classify_file(little, str(tmp_path / "long.wav"), 2.0)


def test_an_unsure_detection_settles_on_the_window_where_the_little_peaks(little, keyword_stream) -> None:
    """With settle, an unsure detection is handed over up to that many hops later, carrying the window whose
    probability of its label was highest; a sure one is handed over at once; the end of input flushes."""
    audio, _ = keyword_stream
    cfg = DetectorConfig(threshold=0.5, smooth=1, settle=3)
    from edge.stream import hop_probabilities

    plain, settled = Listener(little, dataclasses.replace(cfg, settle=0)), Listener(little, cfg)
    got = [d for i in range(0, len(audio), 1600) for d in settled.push(audio[i : i + 1600])] + settled.flush()
    want = [d for i in range(0, len(audio), 1600) for d in plain.push(audio[i : i + 1600])]
    assert [(d.t, d.label) for d in got] == [(d.t, d.label) for d in want] and got
    hop_probs, times = hop_probabilities(little, FrameStream(little.feature_config).push(audio), settled.hop_frames)
    probs = dict(zip(np.round(times, 3), hop_probs))
    times = np.round(times, 3)
    for d in got:
        assert d.handed_t == pytest.approx(min(d.t + 0.3, settled.seconds))
        i = little.labels.index(d.label)
        span = [t for t in times if d.t - 1e-6 <= t <= d.handed_t + 1e-6]
        peak = max(span, key=lambda t: probs[t][i])
        end = round(peak * 16000)
        np.testing.assert_array_equal(d.audio[-min(end, 16000):], audio[max(0, end - 16000) : end])
    sure = Listener(little, dataclasses.replace(cfg, sure=0.0))
    assert all(d.handed_t == d.t and d.sure for i in range(0, len(audio), 1600) for d in sure.push(audio[i : i + 1600]))
    with pytest.raises(ValueError):
        DetectorConfig(settle=6)


def test_hop_probabilities_are_the_listeners_to_the_window(little) -> None:
    from edge.stream import hop_probabilities

    x = (np.random.default_rng(5).standard_normal(16000 * 4) * 0.05).astype(np.float32)
    seen: list[np.ndarray] = []
    lis = Listener(little, DetectorConfig())
    predict = little.predict
    little.predict = lambda w: seen.append(predict(w)[0]) or predict(w)  # type: ignore[method-assign]
    try:
        for i in range(0, len(x), 777):
            lis.push(x[i : i + 777])
    finally:
        del little.predict
    probs, times = hop_probabilities(little, FrameStream(HOP10).push(x), lis.hop_frames)
    assert len(probs) == len(seen) == lis.windows
    np.testing.assert_allclose(probs, np.array(seen), atol=1e-6)
    assert times[-1] == pytest.approx(((lis.windows * lis.hop_frames - 1) * 160 + 480) / 16000)


def test_listen_publishes_each_event_to_a_stock_mosquitto(tmp_path: Path, keyword_stream) -> None:
    from tests.support.mosquitto import Mosquitto

    if not Mosquitto.available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    import paho.mqtt.client as mqtt

    audio, _ = keyword_stream
    got: list[dict] = []
    broker = Mosquitto().start()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda _c, _u, m: got.append(json.loads(m.payload))
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("kws/pi-kitchen/events", qos=1)
    sub.loop_start()
    try:
        time.sleep(0.3)
        r = run_listen("--input", str(write_wav(tmp_path / "s.wav", audio)), "--mqtt", broker.url,
                       "--mqtt-device", "pi-kitchen")
        deadline = time.monotonic() + 5
        while len(got) < len(events(r)) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sub.loop_stop()
        broker.stop()
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert events(r) and got == events(r)


def test_a_broker_that_is_down_costs_the_events_publication_not_the_events(tmp_path: Path, keyword_stream) -> None:
    audio, _ = keyword_stream
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_listen("--input", str(write_wav(tmp_path / "s.wav", audio)), "--mqtt", f"mqtt://127.0.0.1:{port}")
    assert r.returncode == 1 and events(r)
    assert f"{len(events(r))} of {len(events(r))} events were not acknowledged by the broker" in r.stderr.decode()


def every_detection_verified(tmp_path: Path, confirm: float = 0.0) -> Path:
    """A detector file whose every detection goes to the server (sure above 1), after two settle hops."""
    path = tmp_path / f"verify-all-{confirm}.json"
    path.write_text(json.dumps({"detector": {"threshold": 0.5, "smooth": 1, "sure": 1.01, "settle": 2,
                                             "confirm": confirm}}))
    return path


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_unsure_detections_are_verified_by_the_servers_listening_model(tmp_path: Path, keyword_stream,
                                                                      transport: str) -> None:
    """Over gRPC (log-mel features) and over REST (the spec body, ?model= naming the listening model, which
    the server's default --spec-labels can index); a keyword big is less sure of than the detector's
    confirm is rejected."""
    pytest.importorskip("fastapi", reason="the server extra is not installed (the Pi's install)")
    from tests.support.server_process import ServerProcess

    from edge.listen import Shipped

    verifier = Shipped.read(REPO / "models").verifier()  # what the shipped listen.json was chosen with
    listening = REPO / "models" / f"{verifier}.tflite"
    audio, _ = keyword_stream
    server = ServerProcess(REPO / "models" / "big_int8.tflite", "--model", str(listening))
    wav = str(write_wav(tmp_path / "s.wav", audio))
    try:
        where = ["--grpc", server.target] if transport == "grpc" else ["--url", server.url + "/"]
        r = run_listen("--input", wav, "--verify", transport, *where, "--detector", str(every_detection_verified(tmp_path)))
        found = events(r)
        scores = sorted(e.get("verifier_score", -1) for e in found)
        confirm = (scores[0] + scores[-1]) / 2
        strict = run_listen("--input", wav, "--verify", transport, *where,
                            "--detector", str(every_detection_verified(tmp_path, confirm)))
    finally:
        server.stop()
    err = r.stderr.decode()
    assert r.returncode == 0, err[-2000:]
    assert found and {e["decided_by"] for e in found} == {verifier}  # every detection was unsure
    assert all(e["t"] >= e["detected_t"] + 0.2 - 1e-6 for e in found)  # two settle hops, then the round trip
    assert re.search(r"(\d+) verified: (\d+) confirmed", err) and "0 failed" in err and "bytes sent" in err
    assert 0 < scores[0] < scores[-1] <= 1  # big's probability of each verified keyword
    assert strict.returncode == 0
    kept = [(e["detected_t"], e["label"]) for e in found if e["verifier_score"] >= confirm]
    assert 0 < len(kept) < len(found) and [(e["detected_t"], e["label"]) for e in events(strict)] == kept


def test_a_server_that_is_down_costs_the_verification_not_the_audio(tmp_path: Path, keyword_stream) -> None:
    audio, _ = keyword_stream
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    detector = str(every_detection_verified(tmp_path))
    plain = run_listen("--input", str(write_wav(tmp_path / "s.wav", audio)), "--detector", detector)
    r = run_listen("--input", str(tmp_path / "s.wav"), "--verify", "grpc", "--grpc", f"127.0.0.1:{port}",
                   "--timeout", "0.3", "--detector", detector)
    assert r.returncode == 1
    found = events(r)
    assert [(e["label"], e["detected_t"]) for e in found] == [(e["label"], e["t"]) for e in events(plain)]
    assert {e["decided_by"] for e in found} == {"little"} and all(e.get("verify_error") for e in found)
    assert f"{len(found)} failed (emitted as the little decided)" in r.stderr.decode()


def test_the_verifying_model_is_named_in_the_url() -> None:
    from edge.listen import with_model

    assert with_model("http://pi:8080/", "big_listen_int8") == "http://pi:8080/?model=big_listen_int8"
    assert with_model("https://h/?a=1", "m") == "https://h/?a=1&model=m"


def test_the_detector_file_names_the_default_listener_and_verifier(tmp_path: Path) -> None:
    from edge.listen import Shipped

    (tmp_path / "little.tflite").write_bytes(b"")
    none = Shipped.read(tmp_path)
    assert none.little() == tmp_path / "little.tflite" and none.verifier() == "big_listen_int8"
    assert none.detector("little", verified=True) == DetectorConfig()
    (tmp_path / "little_listen.tflite").write_bytes(b"")
    assert Shipped.read(tmp_path).little() == tmp_path / "little_listen.tflite"
    (tmp_path / "listen.json").write_text(json.dumps({"listener": "little_stream", "verifier": "big_stream_int8",
                                                      "verified": {"little_stream": {"threshold": 0.4}}}))
    assert Shipped.read(tmp_path).little() == tmp_path / "little_listen.tflite"  # named, but not there
    (tmp_path / "little_stream.tflite").write_bytes(b"")
    shipped = Shipped.read(tmp_path)
    assert shipped.little() == tmp_path / "little_stream.tflite" and shipped.verifier() == "big_stream_int8"
    assert shipped.detector("little_stream", verified=True).threshold == 0.4


def test_detector_settings_per_model_and_for_a_verified_little(tmp_path: Path) -> None:
    path = tmp_path / "listen.json"
    path.write_text(json.dumps({"models": {"little": {"threshold": 0.7}},
                                "verified": {"little": {"threshold": 0.4, "sure": 0.9}}}))
    assert DetectorConfig.load(path, "little").threshold == 0.7
    assert DetectorConfig.load(path, "little", verified=True) == DetectorConfig(threshold=0.4, sure=0.9)
    assert DetectorConfig.load(path, "other") == DetectorConfig()  # no entry: the defaults
    path.write_text(json.dumps({"models": {"little": {"treshold": 0.7}}}))
    with pytest.raises(ValueError, match="unknown detector settings"):
        DetectorConfig.load(path, "little")


def test_a_verifier_without_probabilities_is_taken_at_its_word_and_the_user_is_told(tmp_path: Path,
                                                                                     keyword_stream) -> None:
    """The course's reference service answers a label index only: confirm cannot apply, every keyword it
    names stands (it always says "left" here), and one warning says why more false accepts get through."""
    from tests.support.reference_service import ReferenceService

    audio, _ = keyword_stream
    with ReferenceService() as url:
        r = run_listen("--input", str(write_wav(tmp_path / "s.wav", audio)), "--verify", "rest", "--url", url,
                       "--verify-model", "reference", "--detector", str(every_detection_verified(tmp_path, 0.99)))
    err = r.stderr.decode()
    found = events(r)
    assert r.returncode == 0, err[-2000:]
    assert found and all(e["label"] == "left" and e["decided_by"] == "reference" and "verifier_score" not in e
                         for e in found)
    assert err.count("answers without a probability, so the detector's confirm 0.99 cannot apply") == 1


def test_a_verifiers_answer_stands_when_it_is_a_keyword_named_with_at_least_confirm() -> None:
    cfg = DetectorConfig(confirm=0.7)
    assert cfg.confirms("yes", 0.7) and cfg.confirms("yes", None)  # no probability: taken as it is
    assert not cfg.confirms("yes", 0.69) and not cfg.confirms("_unknown_", 0.99) and not cfg.confirms("_silence_", None)
    assert DetectorConfig().confirms("no", 0.01)
