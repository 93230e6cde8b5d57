"""Dataset location, split files and the errors a user sees when data is missing."""

import io
import wave
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kws_rpc.errors import DatasetError
from kws_rpc.lab import data


def test_splits_are_fixed_disjoint_and_complete() -> None:
    names = {s: data.split_names(s) for s in data.SPLITS}
    assert [len(names[s]) for s in data.SPLITS] == [6400, 800, 800]
    union = set(names["train"]) | set(names["val"]) | set(names["test"])
    assert len(union) == 8000
    counts = np.bincount([data.label_of(n) for n in names["test"]], minlength=8)
    assert dict(zip(data.LABELS, counts.tolist())) == {"down": 96, "go": 115, "left": 105, "no": 121,
                                                     "right": 96, "stop": 93, "up": 85, "yes": 89}


def _wav(samples: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.zeros(samples, "<i2").tobytes())
    return buf.getvalue()


def test_missing_dir_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="KWS_DATA_DIR"):
        data.find_dataset(tmp_path)


def test_partial_dataset_names_missing_files(tmp_path: Path) -> None:
    first = data.split_names("train")[0]
    (tmp_path / data.DATASET_DIR / first).parent.mkdir(parents=True)
    (tmp_path / data.DATASET_DIR / first).write_bytes(_wav(16000))
    with pytest.raises(DatasetError, match=r"7999 of 8000 clips missing"):
        data.find_dataset(tmp_path)


def test_wrong_content_is_detected(tmp_path: Path, dataset_root: Path) -> None:
    """A complete set of files whose bytes differ from the official release fails the digest check."""
    fake = tmp_path / "fake"
    for name in (n for s in data.SPLITS for n in data.split_names(s)):
        p = fake / data.DATASET_DIR / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    with pytest.raises(DatasetError, match="differ from the official release"):
        data.find_dataset(fake)


def test_archive_extraction(tmp_path: Path) -> None:
    archive = tmp_path / "mini.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("mini_speech_commands/yes/a_nohash_0.wav", _wav(8000))
    out = data.extract_archive(archive, tmp_path / "out")
    audio = data.load_clips(out, ["yes/a_nohash_0.wav"])
    assert audio.shape == (1, 16000) and not audio.any()  # zero-padded to 1 s
    with pytest.raises(DatasetError, match="neither a zip nor a tar"):
        data.extract_archive(Path(__file__), tmp_path / "x")


def test_real_dataset_loads_and_pads(dataset_root: Path) -> None:
    audio, labels, names = data.load_split("test", dataset_root)
    assert audio.shape == (800, 16000) and audio.dtype == np.float32
    assert labels.tolist() == [data.label_of(n) for n in names]
    assert np.abs(audio).max() <= 1.0
