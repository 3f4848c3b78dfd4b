"""Epoch time of each training method as a ratio to standard training, measured in one run.

MNIST-shaped data: real MNIST / Fashion-MNIST training images when the data root has them
(CLIPKIT_DATA), else random images of the same shape. Model: MLP 784-200-80-10 (sigmoid
for the authors' preset as they used it, relu otherwise), batch 128, SGD, λ active in every
step (constant schedule). The methods are timed in turns, ``--repeat`` rounds, and each
keeps its best epoch, so that a load that comes and goes hits them alike.

Rows marked "0.1.0 step" run the frozen copy of the CLIP step before its speed-up
(tests/train/clip_reference.py), when the checkout has it.

Targets: CLIP.authors() ≤ 4× standard; clipkit's defaults (64 pairs) ≤ 1.5×. "λ = 0
(warm-up)" is an epoch of the authors' warm-up, pairs ascended, no penalty; "first layer not
split" evaluates the ascent's proposals with the full forward (clipkit.core.affine_first
off). Rows marked "bfloat16 ascent" run the approximation
``ascent_precision="bfloat16"`` (off by default; its effect on results:
benchmarks/bench_approx.py). The ratios are to standard training in float32; bfloat16 is
faster only where the hardware multiplies it natively (the benchmark prints whether the
CPU reports AVX512-BF16 or AMX).

    python benchmarks/bench_train.py [--n 10000] [--threads 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import clipkit as ck

ROOT = Path(__file__).resolve().parents[1]


def mnist_shaped(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    for name in ("mnist", "fashion-mnist"):
        try:
            x, y = ck.data.load(name, train=True, n=n, download=False)
            return x, y, f"{name} (real, first {len(y)})"
        except ck.data.DataNotFoundError:
            continue
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=gen), torch.randint(10, (n,), generator=gen), "random"


def cpu_bfloat16() -> str:
    """The CPU's native bfloat16 arithmetic, from /proc/cpuinfo's flags (Linux)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return ", ".join(found) if found else "none (bfloat16 products are emulated, slower)"


def reference_clip():
    """The 0.1.0 CLIP step (tests/train/clip_reference.py), or None outside a checkout."""
    sys.path.insert(0, str(ROOT / "tests" / "train"))
    try:
        from clip_reference import ReferenceCLIP
    except ImportError:
        return None
    finally:
        sys.path.pop(0)
    return ReferenceCLIP


def methods() -> dict[str, ck.Method]:
    const = ck.Constant()
    rows: dict[str, ck.Method] = {
        "standard": ck.Standard(),
        "weight decay": ck.WeightDecay(1e-4),
        "CLIP defaults (64 pairs, 2 steps)": ck.CLIP(lam=0.1, data_range=(0.0, 1.0)),
        "CLIP 64 pairs, 1 ascent step": ck.CLIP(lam=0.1, ascent_steps=1, data_range=(0.0, 1.0)),
        "CLIP 128 pairs, 1 ascent step": ck.CLIP(lam=0.1, pairs=128, ascent_steps=1,
                                                 data_range=(0.0, 1.0)),
        "CLIP 32 pairs, 2 ascent steps": ck.CLIP(lam=0.1, pairs=32, data_range=(0.0, 1.0)),
        "CLIP 16 pairs, 1 ascent step": ck.CLIP(lam=0.1, pairs=16, ascent_steps=1,
                                                data_range=(0.0, 1.0)),
        "CLIP authors()": ck.CLIP.authors(schedule=const),
        "CLIP authors(pairs=125)": ck.CLIP.authors(schedule=const, pairs=125),
        "CLIP authors(), λ = 0 (warm-up)": ck.CLIP.authors(schedule=ck.Warmup(1)),
        "CLIP authors(), bfloat16 ascent": ck.CLIP.authors(schedule=const,
                                                           ascent_precision="bfloat16"),
        "CLIP defaults, bfloat16 ascent": ck.CLIP(lam=0.1, data_range=(0.0, 1.0),
                                                  ascent_precision="bfloat16"),
        # an nn.Identity in front hides the first Linear from clipkit.core.affine_first
        "CLIP authors(), first layer not split": ck.CLIP.authors(schedule=const),
    }
    ref = reference_clip()
    if ref is not None:
        old_authors = dict(lam=0.1, pairs=500, noise_dist="uniform", step_size=10.0, power=2,
                           refresh=2000, data_range=(0.0, 1.0), schedule=const)
        rows["CLIP 16 pairs, 0.1.0 step"] = ref(lam=0.1, pairs=16, data_range=(0.0, 1.0))
        rows["CLIP authors() of 0.1.0, 0.1.0 step"] = ref(**old_authors)
    rows["gradient penalty"] = ck.GradientPenalty(0.01)
    rows["PGD-7 adversarial training"] = ck.AdversarialTraining(eps=0.1, steps=7)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10000, help="training images per epoch")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each method's best epoch")
    parser.add_argument("--only", default="", help="row names to time, separated by ';'")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y, source = mnist_shaped(args.n)
    x = x.flatten(1)
    rows = methods()
    if args.only:
        keep = {"standard", *(s.strip() for s in args.only.split(";"))}
        rows = {k: v for k, v in rows.items() if k in keep}
    print(f"data: {source}, {len(y)} images, batch 128, SGD, {args.threads} threads, "
          f"torch {torch.__version__}, CPU bfloat16: {cpu_bfloat16()}")
    # warm-up (allocator, kernels)
    ck.fit(ck.models.mlp([784, 200, 80, 10], seed=0), (x[:1024], y[:1024]), epochs=1,
           optimizer="sgd", lr=0.1, progress=False)
    times = dict.fromkeys(rows, float("inf"))
    for _ in range(args.repeat):
        for name, method in rows.items():
            act = "sigmoid" if "authors" in name else "relu"
            model = ck.models.mlp([784, 200, 80, 10], activation=act, seed=0)
            if "not split" in name:
                model = torch.nn.Sequential(torch.nn.Identity(), *model)
            t = time.perf_counter()
            ck.fit(model, (x, y), method=method, epochs=1, batch_size=128, optimizer="sgd",
                   lr=0.1, seed=0, progress=False)
            times[name] = min(times[name], time.perf_counter() - t)
    base = times["standard"]
    print(f"{'method':<40}{'epoch (s)':>10}{'÷ standard':>12}")
    for name, t in times.items():
        print(f"{name:<40}{t:>10.2f}{t / base:>12.2f}")


if __name__ == "__main__":
    main()
