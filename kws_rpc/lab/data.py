"""Finds Mini Speech Commands and reads the fixed splits.

Where the audio comes from, in order: an explicit directory (``--data-dir``), ``$KWS_DATA_DIR``, a local
archive (zip or tar.xz, ``--archive`` or ``$KWS_DATA_ARCHIVE``), ``./data``, the copy kept in
``../shared/data`` (unpacked into the cache), and, with ``download=True``, the official zip. Whatever the
source, the 8000 WAV files are checked against the digest of the official release before first use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from kws_rpc.audio.wav import pad_or_trim, read_wav
from kws_rpc.errors import DatasetError
from kws_rpc.model.card import LABELS  # noqa: F401  (the data set's words, in its label order)

log = logging.getLogger("kws_rpc.lab.data")  # not __name__: run with -m, that is __main__

SPLITS = ("train", "val", "test")
OFFICIAL_URL = "https://storage.googleapis.com/download.tensorflow.org/data/mini_speech_commands.zip"
# sha256 over the sorted lines "<word>/<file>.wav <md5>\n" of all 8000 clips (see content_digest).
CONTENT_SHA256 = "985fd35e6da9e2a5932ee6e0835e9d8cb13c3cb31d914379761138d4bdd4b35d"
NUM_CLIPS = 8000
DATASET_DIR = "mini_speech_commands"
NOISE_DIR = "_background_noise_"
HOW_TO_GET = (
    "Get it with `make data` (unpacks ../shared/data when present), pass --data-dir DIR or set "
    "KWS_DATA_DIR to a folder holding mini_speech_commands/<word>/*.wav, set KWS_DATA_ARCHIVE to a local "
    "mini_speech_commands.zip or .tar.xz, or pass --download to fetch the official zip."
)


def cache_dir() -> Path:
    return Path(os.environ.get("KWS_CACHE_DIR", Path.home() / ".cache" / "kws"))


def split_names(split: str) -> list[str]:
    """Clip names '<word>/<file>.wav' of a fixed split, as shipped with the package."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    text = resources.files("kws_rpc.lab.splits").joinpath(f"kws_{split}_split.txt").read_text()
    return ["/".join(line.strip().split("/")[-2:]) for line in text.splitlines() if line.strip()]


def label_of(name: str) -> int:
    return LABELS.index(name.split("/")[0])


def content_digest(root: Path, names: Iterable[str]) -> str:
    h = hashlib.sha256()
    for name in sorted(names):
        h.update(f"{name} {hashlib.md5((root / name).read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def _missing(root: Path) -> list[str]:
    names = [n for s in SPLITS for n in split_names(s)]
    return [n for n in names if not (root / DATASET_DIR / n).is_file()]


def _verify(root: Path) -> Path:
    """Checks completeness (always) and content (once, remembered by a stamp file)."""
    missing = _missing(root)
    if missing:
        raise DatasetError(
            f"{root / DATASET_DIR} is incomplete: {len(missing)} of {NUM_CLIPS} clips missing "
            f"(first: {missing[:3]}). {HOW_TO_GET}"
        )
    stamp = root / DATASET_DIR / ".kws-verified"
    if not stamp.exists():
        names = [n for s in SPLITS for n in split_names(s)]
        digest = content_digest(root / DATASET_DIR, names)
        if digest != CONTENT_SHA256:
            raise DatasetError(
                f"the clips under {root / DATASET_DIR} differ from the official release "
                f"(content sha256 {digest[:12]}..., expected {CONTENT_SHA256[:12]}...). {HOW_TO_GET}"
            )
        try:
            stamp.write_text(digest + "\n")
        except OSError:  # read-only copy: verify again next time
            pass
    return root


def _has_dataset(d: Path) -> bool:
    return (d / DATASET_DIR).is_dir()


def extract_archive(archive: Path, dest: Path) -> Path:
    """Unpacks a zip or tar(.xz/.gz) holding mini_speech_commands/ (and optionally noise) into dest."""
    if not archive.is_file():
        raise DatasetError(f"archive {archive} does not exist. {HOW_TO_GET}")
    dest.mkdir(parents=True, exist_ok=True)
    log.info("unpacking %s into %s", archive, dest)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")
    else:
        raise DatasetError(f"{archive} is neither a zip nor a tar archive. {HOW_TO_GET}")
    return dest


def download(dest: Path, url: str = OFFICIAL_URL) -> Path:
    """Downloads the official zip; its content is verified by find_dataset afterwards."""
    dest.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s", url)
    with tempfile.NamedTemporaryFile(suffix=".zip", dir=dest, delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                shutil.copyfileobj(r, tmp)
        except OSError as e:
            os.unlink(tmp.name)
            raise DatasetError(f"could not download {url}: {e}. {HOW_TO_GET}") from None
    try:
        return extract_archive(Path(tmp.name), dest)
    finally:
        os.unlink(tmp.name)


def _shared_copy() -> Path | None:
    """The copy kept beside the repository (../shared/data), if any."""
    cand = Path(__file__).resolve().parents[3] / "shared" / "data"
    return cand if (cand / "mini_speech_commands.tar.xz").is_file() else None


def find_dataset(data_dir: str | os.PathLike | None = None, archive: str | os.PathLike | None = None,
                 allow_download: bool = False) -> Path:
    """Returns a verified folder holding mini_speech_commands/ (and _background_noise_/ if present)."""
    data_dir = data_dir or os.environ.get("KWS_DATA_DIR")
    if data_dir:
        root = Path(data_dir)
        if not _has_dataset(root):
            raise DatasetError(f"{root} holds no {DATASET_DIR}/ folder. {HOW_TO_GET}")
        return _verify(root)
    archive = archive or os.environ.get("KWS_DATA_ARCHIVE")
    unpacked = cache_dir() / "data"
    if archive:
        if not _has_dataset(unpacked):
            extract_archive(Path(archive), unpacked)
        return _verify(unpacked)
    for cand in (Path("data"), unpacked):
        if _has_dataset(cand):
            return _verify(cand)
    shared = _shared_copy()
    if shared is not None:
        for name in ("mini_speech_commands.tar.xz", "background_noise.tar.xz"):
            extract_archive(shared / name, unpacked)
        return _verify(unpacked)
    if allow_download:
        return _verify(download(unpacked))
    raise DatasetError(f"Mini Speech Commands not found. {HOW_TO_GET}")


def load_clips(root: Path, names: Sequence[str], clip_samples: int = 16000, progress: bool = False) -> np.ndarray:
    """(N, clip_samples) float32, each clip zero-padded to 1 s."""
    out = np.zeros((len(names), clip_samples), dtype=np.float32)
    it: Iterable[tuple[int, str]] = enumerate(names)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=len(names), desc="reading clips", unit="clip")
    for i, name in it:
        audio, rate = read_wav(str(root / DATASET_DIR / name))
        if rate != 16000:
            raise DatasetError(f"{name}: expected 16 kHz, found {rate} Hz")
        out[i] = pad_or_trim(audio, clip_samples)
    return out


def load_split(split: str, root: Path, progress: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Audio (N, 16000), labels (N,) and names of one fixed split."""
    names = split_names(split)
    return load_clips(root, names, progress=progress), np.array([label_of(n) for n in names]), names


def load_noise(root: Path) -> list[np.ndarray]:
    """The background-noise recordings (float32), or [] if the folder is absent."""
    d = root / NOISE_DIR
    return [read_wav(str(p))[0] for p in sorted(d.glob("*.wav"))] if d.is_dir() else []


def main(argv: list[str] | None = None) -> None:
    """`kws-data`: fetch, unpack and verify Mini Speech Commands into --dest."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--dest", default="data", help="folder to fill with mini_speech_commands/ (default: data)")
    ap.add_argument("--archive", help="a local mini_speech_commands.zip or .tar.xz instead of downloading")
    ap.add_argument("--download", action="store_true", help=f"download {OFFICIAL_URL}")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    dest = Path(args.dest)
    if not _has_dataset(dest):
        if args.archive:
            extract_archive(Path(args.archive), dest)
        elif args.download:
            download(dest)
        else:
            raise SystemExit(f"nothing to do: {dest} has no {DATASET_DIR}/. {HOW_TO_GET}")
    _verify(dest)
    (dest / DATASET_DIR / ".complete").touch()
    print(f"Mini Speech Commands verified under {dest} ({NUM_CLIPS} clips)")


if __name__ == "__main__":
    main()
