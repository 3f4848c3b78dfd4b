"""Where the time of a CLIP training step goes: a breakdown by kind of work.

Wraps the model's forward (in the ascent: by its number of rows and whether autograd
records it; else the descent step's), and where the ascent splits off the first layer
(``clipkit.core.affine_first``) that layer, the rest of the forward, the proposals'
first layer from the linearization and the products with W that the ascent makes itself
(the input gradients δ·W and the Gram matrix W·Wᵀ, named by their shapes),
torch.autograd.grad (the ascent's backward to the inputs or to the first layer's output),
Tensor.backward (the descent step) and the optimizer's step with wall-clock timers, trains
one epoch, and prints the time per step of each kind; "rest" is Python, indexing, the
loss, the proposals and accepts, the quotients' arithmetic. A timed call inside another
counts for the outer one only.
MLP 784-200-80-10, batch 128, SGD, λ active every step; Fashion-MNIST from $CLIPKIT_DATA,
else random images of that shape (the script says which).

    python benchmarks/profile_clip.py [authors|authors-bf16|defaults|reference-authors|
                                       standard] [--n 5000]
"""

from __future__ import annotations

import argparse
import collections
import importlib
import sys
import time
from pathlib import Path

import torch

import clipkit as ck
from clipkit.core import affine_first, pairs

ROOT = Path(__file__).resolve().parents[1]
T: dict[str, float] = collections.defaultdict(float)


_DEPTH = [0]


def timed(name, fn):
    """fn, its wall-clock time added to T[name]; a timed call inside another timed call
    counts for the outer one only (so that no time is counted twice)."""
    def wrapper(*args, **kwargs):
        _DEPTH[0] += 1
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _DEPTH[0] -= 1
            if _DEPTH[0] == 0:
                T[name] += time.perf_counter() - t
    return wrapper


def product_label(fn):
    """``low_matmul`` as the ascent calls it in ``clipkit.core.pairs``: timed under the
    product's shapes (the Gram matrix W·Wᵀ, the input gradients δ·W)."""
    def wrapper(a, b, *args, **kwargs):
        label = f"first-layer product {tuple(a.shape[1:])} @ {tuple(b.shape[1:])}"
        return timed(label, fn)(a, b, *args, **kwargs)
    return wrapper


def method_for(which: str) -> tuple[ck.Method, str]:
    const = ck.Constant()
    if which == "authors":
        return ck.CLIP.authors(schedule=const), "sigmoid"
    if which == "authors-bf16":
        return ck.CLIP.authors(schedule=const, ascent_precision="bfloat16"), "sigmoid"
    if which == "defaults":
        return ck.CLIP(lam=0.1, data_range=(0.0, 1.0)), "relu"
    if which == "standard":
        return ck.Standard(), "relu"
    if which == "reference-authors":
        sys.path.insert(0, str(ROOT / "tests" / "train"))
        from clip_reference import ReferenceCLIP
        return ReferenceCLIP(lam=0.1, pairs=500, noise_dist="uniform", step_size=10.0, power=2,
                             refresh=2000, data_range=(0.0, 1.0), schedule=const), "sigmoid"
    raise SystemExit(f"unknown setting {which!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("which", nargs="?", default="authors")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        x, y = ck.data.load("fashion-mnist", train=True, n=args.n, download=False)
        source = f"Fashion-MNIST, first {len(y)} training images"
    except ck.data.DataNotFoundError:  # the breakdown's shapes, not its values, need no data
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(args.n, 1, 28, 28, generator=g), torch.randint(10, (args.n,),
                                                                         generator=g)
        source = f"{args.n} RANDOM images (no Fashion-MNIST in CLIPKIT_DATA)"
    print("data:", source)
    x = x.flatten(1)
    method, act = method_for(args.which)
    model = ck.models.mlp([784, 200, 80, 10], activation=act, seed=0)
    inner = model.forward

    in_ascent = [False]

    def forward(inp):
        if in_ascent[0]:
            kind = "grad" if torch.is_grad_enabled() else "no grad"
            label = f"ascent forward, {inp.shape[0]} rows ({kind})"
        else:
            label = "descent forward (batch + penalty pairs)"
        return timed(label, inner)(inp)

    def before_step(run, lam, _inner=method.before_step):
        in_ascent[0] = True
        try:
            return _inner(run, lam)
        finally:
            in_ascent[0] = False

    def split_module(m):
        split = affine_first.split_module(m)
        if split is None:
            return None

        def rest(z):
            kind = "grad" if torch.is_grad_enabled() else "no grad"
            return timed(f"ascent forward after the first layer, {z.shape[1]} rows ({kind})",
                         split.rest)(z)

        return affine_first.AffineFirst(split.weight, split.bias,
                                        timed("ascent first layer W·u", split.first),
                                        rest)

    method.before_step = before_step
    model.forward = forward
    # the module, not the function ``clipkit.train.fit`` that the package exports
    importlib.import_module("clipkit.train.fit").split_module = split_module
    pairs.Linearization.at = timed("proposals' first layer (linearization)",
                                   pairs.Linearization.at)
    # the pairs' first layer where the ascent computes it itself (in bfloat16), and the
    # products with W that pairs.py makes (not inside the model's forward)
    pairs.pairs_first = timed("ascent first layer W·u", pairs.pairs_first)
    pairs.low_matmul = product_label(pairs.low_matmul)
    torch.autograd.grad = timed("ascent backward (input gradients)", torch.autograd.grad)
    torch.Tensor.backward = timed("descent backward", torch.Tensor.backward)
    torch.optim.SGD.step = timed("optimizer step", torch.optim.SGD.step)
    kw = dict(epochs=1, batch_size=128, optimizer="sgd", lr=0.1, seed=0, progress=False)
    ck.fit(ck.models.mlp([784, 200, 80, 10], seed=0), (x[:512], y[:512]), **kw)  # warm-up
    T.clear()
    t0 = time.perf_counter()
    ck.fit(model, (x, y), method=method, **kw)
    total = time.perf_counter() - t0
    steps = -(-len(y) // 128)
    print(f"{args.which}: {total / steps * 1e3:.2f} ms per step ({steps} steps, "
          f"{args.threads} threads)")
    T["rest"] = total - sum(T.values())
    for name, t in sorted(T.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<45}{t / steps * 1e3:8.2f} ms {100 * t / total:6.1f} %")


if __name__ == "__main__":
    main()
