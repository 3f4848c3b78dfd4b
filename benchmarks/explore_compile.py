"""Would torch.compile make the CLIP step cheap? The ceiling, measured on a simplified step.

clipkit's CLIP step runs eagerly: a couple of hundred small torch calls per step, each with
its dispatch overhead (benchmarks/profile_clip.py). torch.compile (inductor, C++ on the
CPU) fuses such calls. This script writes the CLIP step at clipkit's defaults in the
functional form that torch.compile traces as one graph (``fullgraph=True``; the library's
``torch.autograd.grad`` in the ascent breaks graphs) and times it eager and compiled, next
to clipkit's own eager ascent and a standard step. The functional step is a simplified
re-statement of the method for this measurement only, not a second implementation to use:
one model copy, no clamp, no first-layer split, reduction "max", power 1, the accept rule
q' > q (1 + sqrt(eps)), plain SGD.

MLP 784-200-80-10 (ReLU), batch 128, 64 pairs, 2 ascent steps; random tensors of those
shapes (the speed does not depend on the values). Prints milliseconds per step and each
step ÷ the eager standard step (clipkit's ``ck.Standard`` runs the module eagerly).

    python benchmarks/explore_compile.py [--threads 2] [--pairs 64] [--steps 2] [--repeat 300]
        [--device cuda] [--mode reduce-overhead]

Needs a C++ compiler for inductor on the CPU, triton on a GPU; the first compiled call takes
seconds (printed). On a GPU, ``--mode reduce-overhead`` replays the compiled step as a CUDA
graph: one launch per graph instead of one per kernel, the remedy for a launch-bound step.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

import clipkit as ck
from clipkit.core.pairs import AscentRule, PairState, ascend
from clipkit.core.utils import stacked

LR, LAM, FACTOR = 0.01, 0.1, 1.3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2, help="ascent steps")
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--mode", default="default",
                    help="torch.compile mode: default, reduce-overhead (CUDA graphs), ...")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pairs, steps, dev = args.pairs, args.steps, torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(),
                                *ck.models.mlp([784, 200, 80, 10], activation="relu", seed=0))
    model.to(dev)
    params = {k: v.detach() for k, v in model.named_parameters()}
    xb = torch.rand(128, 784, generator=g).to(dev)
    yb = torch.randint(10, (128,), generator=g).to(dev)
    u = torch.rand(pairs, 784, generator=g)
    w0 = torch.cat([u, u + 0.1 * torch.randn(pairs, 784, generator=g)]).to(dev)
    tau0 = torch.ones(pairs, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rtol = torch.finfo(torch.float32).eps ** 0.5

    def f(p: dict[str, Tensor], w: Tensor) -> Tensor:
        return torch.func.functional_call(model, p, (w,))

    def quotient_and_grad(p, w):
        """q_k and the gradient of q_k in w = cat[u, v] (the distance term in closed form)."""
        diff = w[:pairs] - w[pairs:]
        dist = diff.norm(dim=1)
        d = dist.clamp_min(1e-12)
        num, vjp = torch.func.vjp(lambda w_: (lambda o: (o[:pairs] - o[pairs:]).norm(dim=1))(
            f(p, w_)), w)
        q = num / d
        (grad,) = vjp(1 / d)
        coef = torch.where(dist > 1e-12, q / d**2, 0.0)[:, None]
        return q, torch.cat([grad[:pairs] - coef * diff, grad[pairs:] + coef * diff])

    def quotient(p, w):
        with torch.no_grad():
            out = f(p, w)
            return (out[:pairs] - out[pairs:]).norm(dim=1) / (
                w[:pairs] - w[pairs:]).norm(dim=1).clamp_min(1e-12)

    def ascent(p, w, tau):
        q, grad = quotient_and_grad(p, w)
        for i in range(steps):
            w_new = w + torch.cat([tau, tau])[:, None] * grad
            if i < steps - 1:
                q_new, g_new = quotient_and_grad(p, w_new)
            else:
                q_new, g_new = quotient(p, w_new), grad
            ok = q_new > q * (1 + rtol)
            keep = torch.cat([ok, ok])[:, None]
            w, grad = torch.where(keep, w_new, w), torch.where(keep, g_new, grad)
            tau = torch.where(ok, tau * FACTOR, tau / FACTOR)
            q = torch.where(ok, q_new, q)
        return w, tau, q

    def clip_step(p, w, tau):
        w, tau, q = ascent(p, w, tau)
        k = q.argmax()
        uw, vw = w.index_select(0, k[None]), w.index_select(0, (k + pairs)[None])

        def loss(p_):
            out = f(p_, torch.cat([xb, uw, vw]))
            lip = (out[128] - out[129]).norm() / (uw - vw).norm()
            return F.cross_entropy(out[:128], yb) + LAM * lip

        grads = torch.func.grad(loss)(p)
        return {name: p[name] - LR * grads[name] for name in p}

    def standard_step(p, w, tau):
        grads = torch.func.grad(lambda p_: F.cross_entropy(f(p_, xb), yb))(p)
        return {name: p[name] - LR * grads[name] for name in p}

    opt = torch.optim.SGD(model.parameters(), lr=LR)

    def module_standard(*_):
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()

    forward = stacked(model)
    rule = AscentRule(factor=FACTOR)

    def clipkit_ascent(*_):
        state = PairState(w0[None, :pairs].clone(), w0[None, pairs:].clone(), tau0[None].clone())
        return ascend(forward, state, steps, rule)

    def timed(fn: Callable) -> float:
        for _ in range(20):
            fn(params, w0, tau0)
        sync()
        t = time.perf_counter()
        for _ in range(args.repeat):
            fn(params, w0, tau0)
        sync()
        return (time.perf_counter() - t) / args.repeat * 1e3

    rows = [("standard step, module (eager)", timed(module_standard))]
    rows.append((f"clipkit's ascent only ({pairs} pairs, {steps} steps, eager)",
                 timed(clipkit_ascent)))
    for name, fn in [("ascent only", ascent), ("standard step", standard_step),
                     ("CLIP step", clip_step)]:
        rows.append((f"functional {name}, eager", timed(fn)))
        compiled = torch.compile(fn, fullgraph=True, mode=args.mode)
        t = time.perf_counter()
        compiled(params, w0, tau0)
        sync()
        print(f"compiling the functional {name}: {time.perf_counter() - t:.1f} s")
        rows.append((f"functional {name}, compiled ({args.mode})", timed(compiled)))
    # the compiled ascent computes what the eager one does, up to the fused kernels' rounding
    a = ascent(params, w0, tau0)
    b = torch.compile(ascent, fullgraph=True, mode=args.mode)(params, w0, tau0)
    print(f"compiled vs eager ascent: max |w| difference {float((a[0] - b[0]).abs().max()):.2g}, "
          f"max |q| difference {float((a[2] - b[2]).abs().max()):.2g}")
    base = rows[0][1]
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{args.threads} threads"
    print(f"\n{where}, torch {torch.__version__}, {pairs} pairs, {steps} ascent steps")
    print("| step | ms | ÷ standard (module, eager) |\n|---|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} | {ms / base:.2f} |")


if __name__ == "__main__":
    main()
