"""Epoch time (best of --repeat) of each training method as a ratio to standard training, in one run.

MNIST-shaped data: real MNIST / Fashion-MNIST training images when the data root has them
(CLIPKIT_DATA), else random images of the same shape. Model: MLP 784-200-80-10 (sigmoid
for the authors' preset as they used it, relu otherwise), batch 128, SGD.

    python benchmarks/bench_train.py [--n 10000] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

import clipkit as ck


def mnist_shaped(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    for name in ("mnist", "fashion-mnist"):
        try:
            x, y = ck.data.load(name, train=True, n=n, download=False)
            return x, y, f"{name} (real, first {len(y)})"
        except ck.data.DataNotFoundError:
            continue
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=gen), torch.randint(10, (n,), generator=gen), "random"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10000, help="training images per epoch")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=2, help="epochs timed per method (min)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y, source = mnist_shaped(args.n)
    x = x.flatten(1)
    methods = {
        "standard": ck.Standard(),
        "weight decay": ck.WeightDecay(1e-4),
        "CLIP (clipkit defaults)": ck.CLIP(lam=0.1, data_range=(0.0, 1.0)),
        "CLIP (authors' preset)": ck.CLIP.authors(schedule=ck.Constant()),
        "gradient penalty": ck.GradientPenalty(0.01),
        "PGD-7 adversarial training": ck.AdversarialTraining(eps=0.1, steps=7),
    }
    print(f"data: {source}, {len(y)} images, batch 128, SGD, {args.threads} threads, "
          f"torch {torch.__version__}")
    # warm-up (allocator, kernels)
    ck.fit(ck.models.mlp([784, 200, 80, 10], seed=0), (x[:1024], y[:1024]), epochs=1,
           optimizer="sgd", lr=0.1, progress=False)
    times = {}
    for name, method in methods.items():
        act = "sigmoid" if "authors" in name else "relu"
        best = float("inf")
        for _ in range(args.repeat):
            model = ck.models.mlp([784, 200, 80, 10], activation=act, seed=0)
            t = time.perf_counter()
            ck.fit(model, (x, y), method=method, epochs=1, batch_size=128, optimizer="sgd",
                   lr=0.1, seed=0, progress=False)
            best = min(best, time.perf_counter() - t)
        times[name] = best
    base = times["standard"]
    print(f"{'method':<30}{'epoch (s)':>10}{'÷ standard':>12}")
    for name, t in times.items():
        print(f"{name:<30}{t:>10.2f}{t / base:>12.2f}")


if __name__ == "__main__":
    main()
