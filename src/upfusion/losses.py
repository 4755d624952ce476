"""Training losses of UP-Fusion, selectable by name (spec section 8).

- ``paper``: the paper's eqs. 4-5, ``mean|grad F - max(grad A, grad B)| + mean|F - A| + mean|F - B|``.
- ``reference``: the authors' current code, ``10 mean|F - max(A, B)| + 10 mean|grad F - max(grad A, grad B)|
  + 10 (1 - (wA SSIM(A, F) + wB SSIM(B, F)))`` with gradient-derived weights ``wA``, ``wB``;
  and, when given a weight (``--loss-weights edge=W``; ours, not the paper's), ``W edge_term``:
  the signed Sobel gradient's L1 distance to the stronger source's.

``grad = |Sobel_x| + |Sobel_y|`` (cross-correlation, zero padding 1). Every loss takes the
sources and the unclamped output as ``[N, 1, H, W]`` float tensors in [0, 1] and returns
``(total, parts)``: the scalar to minimise and its named terms (detached) for logging. One
deviation from the reference: its visible source is the plain mean of R, G, B; here it is the
luma the network sees.

``with_black_margin`` is ours, not the paper's (``upfusion train --black-margin M``): wherever both
sources are exactly 0 it asks for an output at or below ``-M``, so that black stays exactly 0
after the pipeline's clamp instead of hovering around it (the paper's SSIM, with C1 = 1e-4 on
0..255 grey levels, scores a black patch one grey level off as almost 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import torch
import torch.nn.functional as F

LossResult = tuple[torch.Tensor, dict[str, float]]
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], LossResult]

_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
_SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))


def sobel_components(x: torch.Tensor) -> torch.Tensor:
    """``[Sobel_x * x, Sobel_y * x]`` of ``[N, 1, H, W]`` as ``[N, 2, H, W]``, signed, zero padding 1."""
    kernel = torch.tensor((_SOBEL_X, _SOBEL_Y), dtype=x.dtype, device=x.device).unsqueeze(1)
    return F.conv2d(x, kernel, padding=1)


def sobel_gradient(x: torch.Tensor) -> torch.Tensor:
    """``|Sobel_x * x| + |Sobel_y * x|`` of ``[N, 1, H, W]``, zero padding 1, same size."""
    return sobel_components(x).abs().sum(dim=1, keepdim=True)


def edge_term(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``mean(|Sobel_x F - Sobel_x S| + |Sobel_y F - Sobel_y S|)``, S the source with the stronger
    gradient at each pixel: the signed gradient, so that an edge's direction and side count, not
    only its strength (ours, not the paper's; the spec's gradient term matches magnitudes only)."""
    g_a, g_b = sobel_components(a), sobel_components(b)
    stronger_a = g_a.abs().sum(dim=1, keepdim=True) >= g_b.abs().sum(dim=1, keepdim=True)
    return (sobel_components(f) - torch.where(stronger_a, g_a, g_b)).abs().sum(dim=1).mean()


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 2-D Gaussian ``[1, 1, size, size]``."""
    r = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).to(dtype)[None, None]


def ssim(x: torch.Tensor, y: torch.Tensor, c1: float = 0.01**2, c2: float = 0.03**2) -> torch.Tensor:
    """Mean SSIM of ``[N, 1, H, W]`` images in [0, 1]: 11x11 Gaussian window (sigma 1.5),
    zero padding 5, averaged over every pixel and the batch (as the reference's training code)."""
    w = gaussian_window(dtype=x.dtype, device=x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, padding=5)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).mean()


# Each loss's terms and their weights in the spec; ``get_loss(name, weights)`` may change them.
# ``edge`` (``edge_term``) is ours: weight 0, so not computed, unless asked for.
TERM_WEIGHTS: dict[str, dict[str, float]] = {
    "paper": {"grad": 1.0, "l1_a": 1.0, "l1_b": 1.0},
    "reference": {"intensity": 10.0, "grad": 10.0, "ssim": 10.0, "edge": 0.0},
}


OPTIONAL_TERMS = frozenset({"edge"})  # computed, logged and added only when given a weight


def reported_terms(name: str, weights: Mapping[str, float] | None = None) -> list[str]:
    """The terms ``get_loss(name, weights)`` reports, in order: an optional one only when weighted."""
    weighted = {**TERM_WEIGHTS[name], **(weights or {})}
    return [t for t in TERM_WEIGHTS[name] if t not in OPTIONAL_TERMS or weighted[t]]


def paper_loss(
    a: torch.Tensor, b: torch.Tensor, f: torch.Tensor, weights: Mapping[str, float] = TERM_WEIGHTS["paper"]
) -> LossResult:
    """Spec eqs. 4-5: gradient L1 to ``max(grad A, grad B)`` plus L1 to each source (per-pixel means)."""
    grad = (sobel_gradient(f) - torch.maximum(sobel_gradient(a), sobel_gradient(b))).abs().mean()
    l1_a = (f - a).abs().mean()
    l1_b = (f - b).abs().mean()
    total = weights["grad"] * grad + weights["l1_a"] * l1_a + weights["l1_b"] * l1_b
    return total, {"grad": grad.item(), "l1_a": l1_a.item(), "l1_b": l1_b.item()}


def reference_loss(
    a: torch.Tensor, b: torch.Tensor, f: torch.Tensor, weights: Mapping[str, float] = TERM_WEIGHTS["reference"]
) -> LossResult:
    """The reference implementation's loss (spec section 8): intensity, gradient and
    gradient-weighted SSIM terms, each times 10 (``weights``)."""
    grad_a, grad_b = sobel_gradient(a), sobel_gradient(b)
    intensity = (f - torch.maximum(a, b)).abs().mean()
    grad = (sobel_gradient(f) - torch.maximum(grad_a, grad_b)).abs().mean()
    # weights from the whole batch's mean gradients (no gradient flows through them)
    mean_a, mean_b = grad_a.mean(), grad_b.mean()
    denom = (mean_a + mean_b).clamp_min(torch.finfo(a.dtype).tiny)
    w_a, w_b = mean_a / denom, mean_b / denom
    structure = 1 - (w_a * ssim(a, f) + w_b * ssim(b, f))
    total = weights["intensity"] * intensity + weights["grad"] * grad + weights["ssim"] * structure
    parts = {"intensity": intensity.item(), "grad": grad.item(), "ssim": structure.item()}
    if weights.get("edge", 0.0):
        edge = edge_term(a, b, f)
        total = total + weights["edge"] * edge
        parts["edge"] = edge.item()
    return total, parts


BLACK_WEIGHT = 10.0  # as each term of the reference loss


def black_margin_term(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor, margin: float) -> torch.Tensor:
    """``mean(relu(F + margin))`` over the pixels where A and B are both exactly 0, per pixel of the
    batch (0 where there are none)."""
    black = (a == 0) & (b == 0)
    return (F.relu(f + margin) * black).mean()


def with_black_margin(loss: LossFn, margin: float) -> LossFn:
    """``loss`` plus ``BLACK_WEIGHT * black_margin_term``, where ``loss`` sees black pixels (both
    sources 0) clamped at 0, as the pipeline shows them: any output at or below 0 is a perfect
    black there, so nothing pulls it back up to the border of rounding to grey level 1, and the
    margin term pushes it on down to ``-margin``."""

    def total(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> LossResult:
        black = (a == 0) & (b == 0)
        value, parts = loss(a, b, torch.where(black, f.clamp_min(0), f))
        term = black_margin_term(a, b, f, margin)
        return value + BLACK_WEIGHT * term, {**parts, "black": term.item()}

    return total


LOSSES: dict[str, LossFn] = {
    "paper": paper_loss,
    "reference": reference_loss,
}


def get_loss(name: str, weights: Mapping[str, float] | None = None) -> LossFn:
    """The loss function called ``name`` (see ``LOSSES``), with the terms named in ``weights``
    weighted so instead of as the spec has them (``TERM_WEIGHTS``). ValueError names the known
    losses or terms."""
    try:
        loss = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}") from None
    if not weights:
        return loss
    unknown = sorted(set(weights) - set(TERM_WEIGHTS[name]))
    if unknown:
        raise ValueError(f"loss {name!r} has no term {', '.join(unknown)}; its terms: {', '.join(TERM_WEIGHTS[name])}")
    return partial(loss, weights={**TERM_WEIGHTS[name], **{k: float(v) for k, v in weights.items()}})


def parse_term_weights(text: str) -> dict[str, float]:
    """``"grad=20,ssim=5"`` as ``{"grad": 20.0, "ssim": 5.0}``; ValueError says what is wrong."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        term, sep, value = item.partition("=")
        try:
            weights[term.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not term.strip():
            raise ValueError(f"loss weights are TERM=NUMBER,..., not {text!r}")
    return weights
