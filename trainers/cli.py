"""`kws-train`: the console script of ``trainers.train``, with a clear message where TensorFlow is missing
(the edge and server installs have none; training needs ``pip install 'kws[train]'``)."""

from __future__ import annotations

import importlib.util


def train(argv: list[str] | None = None) -> None:
    if importlib.util.find_spec("tensorflow") is None:
        raise SystemExit("kws-train: error: TensorFlow is not installed; training needs the train extras: "
                         "pip install '.[train]' (or make venv, which installs everything)")
    from trainers import train as training

    training.main(argv)


if __name__ == "__main__":
    train()
