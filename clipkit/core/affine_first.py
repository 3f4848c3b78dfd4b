"""A model's first affine map, split off its forward, so that the pair ascent can reuse it.

For f = g ∘ A with A(x) = W·flat(x) + b (W: n₁ × n₀), the first layer's output at a
moved input x' = x + s·∇ needs no product with W:

    A(x') = A(x) + s·W∇,

and the pair ascent's gradients lie in W's row space up to a multiple of the pair's
difference: ∇_u = Wᵀδ_u − c·(u − v), ∇_v = Wᵀδ_v + c·(u − v) (δ: the gradient at the
first layer's output, ``clipkit.core.pairs``), so

    W∇_u = Gδ_u − c·(A(u) − A(v)),   W∇_v = Gδ_v + c·(A(u) − A(v)),   G = W Wᵀ.

Per input that is n₁² multiplications instead of n₀·n₁ (784-200-80-10: 4× fewer), plus G
once per ascent. ``clipkit.core.pairs.ascend`` evaluates its proposals this way where the
model is an ``nn.Sequential`` whose first layer is an ``nn.Linear`` (after ``nn.Flatten``
only) that narrows (n₁ < n₀), the pairs are not clamped (a clamp is not affine), and it is
less work: steps·2P·(n₀ − n₁) > n₀·n₁ (the authors' 500 pairs on 784-200-…: yes; 64 pairs:
no). Exact in exact arithmetic; in floating point the proposals' first-layer outputs differ
from W x' + b by rounding.

With a low precision (``CLIP(ascent_precision="bfloat16")``, an approximation) the products
with W run in that dtype (:func:`low_matmul`), and a pair's first-layer outputs are taken as

    A(u) = W·u + b,   A(v) = A(u) − W·(u − v)        (:func:`pairs_first`),

so that the difference A(u) − A(v), which the quotient's numerator depends on, is rounded
relative to itself and not to A(u) (measured on a trained 784-200-80-10 MLP: quotients
within 0.06 % of float32 on average, 0.5 % at worst; W·u and W·v rounded separately: 0.8 %,
4 %).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from clipkit.core.utils import stacked

__all__ = ["AffineFirst", "Linearization", "copies_matmul", "first_linear", "low_matmul",
           "pairs_first", "split_module", "split_stacked"]


@dataclass(frozen=True)
class AffineFirst:
    """f = rest ∘ first, first(x) = W·flat(x) + b, with a model axis K first.

    Attributes:
        weight: W per copy at the current parameters, (K, n₁, n₀), no graph.
        bias: b per copy (K, n₁), no graph, or None where the layer has none.
        first: (K, M, *in) → (K, M, n₁), without a graph to the parameters.
        rest: (K, M, n₁) → (K, M, *out), differentiable in its input.
    """

    weight: Callable[[], Tensor]
    bias: Callable[[], Tensor | None]
    first: Callable[[Tensor], Tensor]
    rest: Callable[[Tensor], Tensor]


@dataclass
class Linearization:
    """What the ascent step from pairs w = cat[u, v] needs to know the first layer's output
    at its proposal without a product with W (module docstring): z = A(w)
    (K, 2P, n₁), δ = the gradient at z (K, 2P, n₁), and the distance term's coefficient c
    (K, P), so that ∇_u = Wᵀδ_u − c·(u − v), ∇_v = Wᵀδ_v + c·(u − v)."""

    z: Tensor
    delta: Tensor
    coef: Tensor

    def at(self, gram: Tensor, s: Tensor, low: torch.dtype | None = None) -> Tensor:
        """A(w + s·∇) = z + s·(Gδ ∓ c·(z_u − z_v)), G = W Wᵀ (``gram``: (K, n₁, n₁));
        ``low``: the product Gδ in that dtype."""
        step = low_matmul(self.delta, gram, low)
        p = self.z.shape[1] // 2
        z_u, z_v = self.z[:, :p], self.z[:, p:]
        dz = (z_u - z_v) * self.coef[..., None]
        s_u, s_v = step[:, :p], step[:, p:]
        s_u.sub_(dz)
        s_v.add_(dz)
        return torch.addcmul(self.z, torch.cat([s, s], dim=1)[..., None], step)


def first_linear(model: nn.Module) -> int | None:
    """The index of the first ``nn.Linear`` of an ``nn.Sequential`` whose modules before it
    are ``nn.Flatten`` that flattens every input axis, where that layer narrows (n₁ < n₀:
    only then is n₁² less work than n₀·n₁); None for any other model."""
    if not isinstance(model, nn.Sequential):
        return None
    for i, module in enumerate(model):
        if type(module) is nn.Linear:
            return i if module.out_features < module.in_features else None
        if not (type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1):
            return None
    return None


def copies_matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b per copy, (K, m, n) @ (K, n, p) → (K, m, p). One copy: a plain matrix product
    (on the CPU torch's bmm with a batch of one took up to twice as long as mm, measured on
    1000×200 @ 200×784)."""
    if a.shape[0] == 1:
        return (a[0] @ b[0]).unsqueeze(0)
    return torch.bmm(a, b)


def low_matmul(a: Tensor, b: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """a @ b per copy (``copies_matmul``), with ``dtype``: both factors cast to it and the
    product cast back to a's dtype (None: a @ b as it is). In a low dtype each copy is its
    own product, so that K stacked copies (``ck.fit_path``) round as K separate runs do."""
    if dtype is None or dtype == a.dtype:
        return copies_matmul(a, b)
    lo_a, lo_b = a.to(dtype), b.to(dtype)
    out = torch.stack([x @ y for x, y in zip(lo_a, lo_b, strict=True)])
    return out.to(a.dtype)


def pairs_first(affine: AffineFirst, w: Tensor, dtype: torch.dtype | None = None,
                diff: Tensor | None = None) -> Tensor:
    """The first layer's outputs at the pairs w = cat[u, v] (K, 2P, *in) → (K, 2P, n₁).

    None: ``affine.first(w)``. With ``dtype`` (low precision): A(u) = W·u + b and
    A(v) = A(u) − W·(u − v), the products in ``dtype`` (module docstring); ``diff``: u − v
    where the caller has it."""
    if dtype is None or dtype == w.dtype:
        return affine.first(w)
    p = w.shape[1] // 2
    u, v = w[:, :p], w[:, p:]
    diff = u - v if diff is None else diff
    wt = affine.weight().transpose(1, 2)
    with torch.no_grad():
        z_u = low_matmul(u.flatten(2), wt, dtype)
        bias = affine.bias()
        if bias is not None:
            z_u += bias[:, None]
        return torch.cat([z_u, z_u - low_matmul(diff.flatten(2), wt, dtype)], dim=1)


def split_module(model: nn.Module) -> AffineFirst | None:
    """The split of one model (K = 1), or None where ``first_linear`` finds no first layer."""
    i = first_linear(model)
    if i is None:
        return None
    linear, rest = model[i], model[i + 1:]

    def first(x: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.nn.functional.linear(x.flatten(2), linear.weight, linear.bias)

    def bias() -> Tensor | None:
        return None if linear.bias is None else linear.bias.detach().unsqueeze(0)

    return AffineFirst(weight=lambda: linear.weight.detach().unsqueeze(0), bias=bias,
                       first=first, rest=stacked(rest))


def split_stacked(template: nn.Module, params: dict[str, Tensor],
                  buffers: dict[str, Tensor]) -> AffineFirst | None:
    """The split of K copies of ``template`` whose parameters and buffers are stacked on a
    first axis (``ck.fit_path``'s vmap), or None where ``first_linear`` finds none."""
    i = first_linear(template)
    if i is None:
        return None
    rest = template[i + 1:]  # a slice keeps the modules' names, so the stacked keys fit
    names = {n for n, _ in rest.named_parameters()}
    buffer_names = {n for n, _ in rest.named_buffers()}
    w_name, b_name = f"{i}.weight", f"{i}.bias"

    def first(x: Tensor) -> Tensor:
        with torch.no_grad():
            z = x.flatten(2) @ params[w_name].transpose(1, 2)
            return z + params[b_name][:, None] if b_name in params else z

    def one(p, b, z):
        return functional_call(rest, (p, b), (z,))

    batched = vmap(one, in_dims=(0, 0, 0), randomness="different")

    def rest_forward(z: Tensor) -> Tensor:
        return batched({n: params[n] for n in names},
                       {n: buffers[n] for n in buffer_names}, z)

    def bias() -> Tensor | None:
        return params[b_name].detach() if b_name in params else None

    return AffineFirst(weight=lambda: params[w_name].detach(), bias=bias, first=first,
                       rest=rest_forward)
