"""How many kernels a training step launches: the cost model of a launch-bound GPU.

On a GPU at these sizes (MLP 784-200-80-10, batch 128) a step costs about what its kernel
launches cost, not their arithmetic (docs/method.md). This script counts, on the CPU, the
torch operators a step runs that would each launch a kernel: the innermost ``aten::``
calls (those under which no other one counts) and the matrix products, less the operators
that only make a view (``view``, ``slice``, ``t``, ...) and launch nothing, and less the
CPU's conversions of Python numbers to tensors. One epoch of ``ck.fit`` per method is
profiled (after a warm-up epoch), and the count per step is printed with its ratio to
standard training. Counting is deterministic, so unlike a timing it needs no quiet machine;
it predicts the GPU ratio only where launches dominate.

    python benchmarks/count_ops.py [--steps 12]
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

import clipkit as ck

#: operators that return a view or metadata and launch no kernel
VIEWS = frozenset({
    "aten::view", "aten::_unsafe_view", "aten::reshape", "aten::slice", "aten::t",
    "aten::transpose", "aten::permute", "aten::unsqueeze", "aten::squeeze", "aten::select",
    "aten::expand", "aten::as_strided", "aten::detach", "aten::alias", "aten::flatten",
    "aten::split", "aten::split_with_sizes", "aten::chunk", "aten::unbind", "aten::narrow",
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::resize_",
    "aten::_has_compatible_shallow_copy_type", "aten::is_nonzero", "aten::item",
    "aten::_local_scalar_dense", "aten::lift_fresh", "aten::result_type", "aten::size",
    "aten::stride", "aten::numel", "aten::dim", "aten::contiguous", "aten::to",
    "aten::_to_copy_noop", "aten::set_", "aten::_reshape_alias", "aten::expand_as",
    "aten::view_as", "aten::type_as", "aten::resolve_conj", "aten::resolve_neg",
})


def _scalar_conversion(event) -> bool:
    """``aten::to`` of a 0-dim tensor: on the CPU, a Python number taking the other
    operand's dtype (``t * 0.5``). On a GPU the number travels as a kernel argument."""
    return event.name in ("aten::to", "aten::_to_copy") and list(event.input_shapes[:1]) == [[]]


#: matrix products: their BLAS call is no aten operator, so they count themselves as well as
#: what they call (addmm's copy of the bias into the output)
BLAS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mv",
                  "aten::addmv", "aten::dot", "aten::_addmm_activation"})


def _count(event, names: collections.Counter) -> int:
    """The kernels under ``event`` (itself included), added to ``names``: an aten operator
    that calls none counts once, unless it is a view or a scalar conversion."""
    if _scalar_conversion(event):
        return 0
    below = sum(_count(c, names) for c in event.cpu_children)
    name = event.name
    if not name.startswith("aten::") or name in VIEWS:
        return below
    if below == 0 or name in BLAS:
        names[name] += 1
        return below + 1
    return below


def kernels_per_step(method: ck.Method, activation: str, x: torch.Tensor, y: torch.Tensor,
                     batch: int) -> tuple[float, collections.Counter]:
    """Kernels per training step of one ``ck.fit`` epoch (``_count``), and their names."""
    model = ck.models.mlp([784, 200, 80, 10], activation=activation, seed=0)
    kwargs = dict(epochs=1, batch_size=batch, optimizer="sgd", lr=0.1, seed=0, progress=False,
                  device="cpu")
    ck.fit(model, (x[:2 * batch], y[:2 * batch]), method=method, **kwargs)  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        ck.fit(model, (x, y), method=method, **kwargs)
    names: collections.Counter = collections.Counter()
    for e in prof.events():
        if e.cpu_parent is None:
            _count(e, names)
    steps = len(y) // batch
    return sum(names.values()) / steps, names


def rows() -> dict[str, tuple[ck.Method, str]]:
    """The methods compared, each with its MLP's activation (also bench_overhead.py's)."""
    clip = dict(lam=0.1, data_range=(0.0, 1.0))
    return {
        "standard": (ck.Standard(), "relu"),
        "weight decay": (ck.WeightDecay(1e-4), "relu"),
        "CLIP defaults (64 pairs, 2 steps)": (ck.CLIP(**clip), "relu"),
        "CLIP 64 pairs, 1 ascent step": (ck.CLIP(ascent_steps=1, **clip), "relu"),
        "CLIP 64 pairs, 0 ascent steps": (ck.CLIP(ascent_steps=0, **clip), "relu"),
        "CLIP authors()": (ck.CLIP.authors(schedule=ck.Constant()), "sigmoid"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12, help="training steps profiled")
    args = parser.parse_args()
    batch = 128
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.steps * batch, 784, generator=g)
    y = torch.randint(10, (len(x),), generator=g)
    counts = {name: kernels_per_step(m, act, x, y, batch) for name, (m, act) in rows().items()}
    base = counts["standard"][0]
    print(f"torch {torch.__version__}, MLP 784-200-80-10, batch {batch}, {args.steps} steps")
    print("| method | kernels per step | ÷ standard |\n|---|---|---|")
    for name, (n, _) in counts.items():
        print(f"| {name} | {n:.0f} | {n / base:.2f} |")
    n, names = counts["CLIP defaults (64 pairs, 2 steps)"]
    steps = args.steps
    print("\nCLIP defaults, the most frequent: " + ", ".join(
        f"{k.removeprefix('aten::')} {v / steps:.0f}" for k, v in names.most_common(12)))


if __name__ == "__main__":
    main()
