"""How many seeds of the published setting die when λ switches on, with CLIP as it is and
with one field changed.

The published setting (``CLIP.authors()`` on the MLP 784-200-80-10 with a sigmoid also on
the logits, Fashion-MNIST, SGD lr 0.1 momentum 0.9, batch 128) warms up at λ = 0 for six
epochs and then switches the penalty on; on some seeds the network then collapses to a
constant output (chance accuracy) and stays there. Which seeds do depends on rounding, so a
few seeds cannot tell whether an option makes it more likely: this trains many seeds for a
few epochs past the switch-on (one vectorised ``fit_path`` per variant) and counts the
seeds whose test accuracy is at most ``--chance`` after the last epoch. The variants:
"exact" (CLIP as it is), "not split" (the same algorithm with an ``nn.Identity`` in front of
the model, which hides the first layer from ``clipkit.core.affine_first``: rounded
differently, nothing else) and the ``--change``.

    python benchmarks/bench_collapse.py [--seeds 20] [--epochs 9] [--n 60000]
                                        [--change "ascent_precision='bfloat16'"]
"""

from __future__ import annotations

import argparse
import ast
import time

import torch

import clipkit as ck

SIZES = [784, 200, 80, 10]


def published() -> torch.nn.Module:
    return ck.models.mlp(SIZES, activation="sigmoid", last_activation=True)


def not_split() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Identity(), *published())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=20, help="seeds 0 .. seeds-1")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--n", type=int, default=60000, help="training images")
    parser.add_argument("--chance", type=float, default=0.15,
                        help="test accuracy at or below which a seed counts as collapsed")
    parser.add_argument("--change", default="ascent_precision='bfloat16'",
                        help="the CLIP field to change and its value, NAME=VALUE")
    args = parser.parse_args()
    field, text = (part.strip() for part in args.change.split("=", 1))
    x, y = ck.data.load("fashion-mnist", train=True, n=args.n, download=False)
    xt, yt = ck.data.load("fashion-mnist", train=False, download=False)
    x, xt = x.flatten(1), xt.flatten(1)
    seeds = list(range(args.seeds))
    exact = ck.CLIP.authors()
    variants = {"exact": (published, exact), "not split": (not_split, exact),
                f"{field}={text}": (published, exact.replace(**{field: ast.literal_eval(text)}))}
    print(f"published setting, Fashion-MNIST {len(y)} images, {args.epochs} epochs, seeds "
          f"0-{args.seeds - 1}; collapsed: test accuracy <= {args.chance} after the last epoch")
    for label, (model_fn, method) in variants.items():
        t = time.perf_counter()
        ds = ck.fit_path(model_fn, (x, y), method, seed=seeds, epochs=args.epochs,
                         batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9,
                         test=(xt, yt), progress=False)
        last = ds.test_acc.sel(lam=method.lam).isel(epoch=-1)
        dead = [s for s in seeds if float(last.sel(seed=s)) <= args.chance]
        alive = [float(last.sel(seed=s)) for s in seeds if s not in dead]
        mean_alive = 100 * sum(alive) / len(alive) if alive else float("nan")
        print(f"  {label:<32} collapsed {len(dead):>2} of {len(seeds)}  seeds {dead}  "
              f"(the others: {mean_alive:.1f} % mean)  {time.perf_counter() - t:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
