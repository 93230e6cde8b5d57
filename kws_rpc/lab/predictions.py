"""Every model's probabilities on a data set split, computed once and cached on disk: what the comparison
(``kws-compare``), the stacking (``trainers.stack``) and the probes read instead of rerunning the models."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from kws_rpc.lab.data import load_split
from kws_rpc.model.kws_model import KwsModel

log = logging.getLogger("kws.compare")
# Cached probabilities are keyed by the feature code too: a change to it recomputes them.
FEATURE_CODE = Path(__file__).resolve().parent.parent / "audio" / "features.py"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dbfs(peak: float) -> float:
    return round(float(20 * np.log10(max(float(peak), 1e-9))), 1)


class Predictions:
    """Per-model probabilities on the splits, cached on disk by model sha256 + split + feature code."""

    def __init__(self, cache_dir: Path, data_root: Path) -> None:
        self.cache_dir = cache_dir
        self.root = data_root
        self._audio: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}
        self._peak: dict[str, np.ndarray] = {}
        self._code = hashlib.sha256(FEATURE_CODE.read_bytes()).hexdigest()[:12]

    def labels(self, split: str) -> np.ndarray:
        return self._load(split)[1]

    def _load(self, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if split not in self._audio:
            self._audio[split] = load_split(split, self.root)
        return self._audio[split]

    def _peaks(self, split: str) -> np.ndarray:
        """Every clip's peak |sample| (full scale 1), computed once per split."""
        if split not in self._peak:
            self._peak[split] = np.abs(self._load(split)[0]).max(axis=-1)
        return self._peak[split]

    def clips(self, split: str, which: np.ndarray) -> list[tuple[str, float]]:
        """(name, peak level in dBFS) of the clips ``which`` of a split."""
        names = self._load(split)[2]
        return [(names[i], dbfs(pk)) for i, pk in zip(which, self._peaks(split)[which])]

    def median_peak_dbfs(self, split: str) -> float:
        return dbfs(np.median(self._peaks(split)))

    def peaks_dbfs(self, split: str) -> np.ndarray:
        """Every clip's peak level in dBFS (digital silence counts as -180)."""
        return 20 * np.log10(np.maximum(self._peaks(split), 1e-9))

    def probabilities(self, path: Path, split: str) -> np.ndarray:
        sha = file_sha256(path)
        cache = self.cache_dir / f"{sha[:24]}-{split}-{self._code}.npz"
        if cache.is_file():
            with np.load(cache) as z:
                return z["probabilities"]
        model = KwsModel(path)  # checks the file against its card
        audio, y, _ = self._load(split)
        probs = np.concatenate([model.predict(model.features(audio[i : i + 200]))
                                for i in range(0, len(audio), 200)])
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, probabilities=probs, labels=y, model=str(path), sha256=sha)
        tmp.replace(cache)
        log.info("%s on %s: %d clips, cached in %s", path.name, split, len(probs), cache)
        return probs
