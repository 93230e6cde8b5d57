"""`python -m trainers.plot`: validation-accuracy curves of every shipped model, from the histories its
card records, as models/training_curves.png."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="models", help="folder of model cards")
    ap.add_argument("--out", default="models/training_curves.png")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for card_path in sorted(Path(args.models).glob("*.json")):
        card = json.loads(card_path.read_text())
        hist = card.get("training", {}).get("val_history")
        if not hist:
            continue
        line, = ax.plot(range(1, len(hist) + 1), [100 * a for a in hist],
                        label=f"{card['name']} ({card['architecture']})")
        ramp = card["training"].get("prune_ramp_epochs")
        if ramp:
            ax.axvspan(ramp[0] + 1, ramp[1] + 1, color=line.get_color(), alpha=0.08)
    ax.set(xlabel="epoch (shaded: sparsity ramps up while the little model trains)", ylabel="val accuracy (%)", ylim=(85, 100),
           title="Validation accuracy while training (kws_val_split.txt)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
