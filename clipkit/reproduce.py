"""The README's main job: a quick CPU reproduction.

For now it trains a small network with CLIP on the 1-D regression problem at three λ,
next to standard training and weight decay, and prints what it did. (The notebooks and
sweeps that regenerate the paper will take over this entry point.)
"""

from __future__ import annotations

import torch

from . import data, models
from .clip import CLIP
from .regularizers import Standard, WeightDecay
from .train import fit


def main() -> int:
    x, y = data.regression(n=200, noise=0.1, seed=0)
    print(f"1-D regression: n={len(x)}, label mean {float(y.mean()):.3f}, "
          f"label spread {float(y.max() - y.min()):.3f}")
    print(f"{'method':<22}{'lam':>8}{'train mse':>12}{'Lip_X':>10}{'output spread':>15}")
    runs = [("standard", Standard())] + [
        ("CLIP", CLIP(lam=lam)) for lam in (0.01, 0.1, 1.0)
    ] + [("weight decay", WeightDecay(lam=1.0))]
    for name, method in runs:
        model = models.mlp([1, 64, 64, 1], activation="relu", seed=0)
        hist = fit(model, (x, y), method=method, epochs=200, lr=1e-2, seed=0, progress=False)
        with torch.no_grad():
            out = model(x)
        lip = float(hist["lip"][-1]) if "lip" in hist else float("nan")
        print(f"{name:<22}{method.lam:>8.3g}{float(hist.loss[-1]):>12.4f}{lip:>10.3f}"
              f"{float(out.max() - out.min()):>15.3f}")
    print("A large λ drives CLIP to the label mean (spread → 0); weight decay to the zero network.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
