"""Escaping with noise: perturbed gradient descent and annealed gradient noise.

Perturbed gradient descent (Jin et al. 2017, "How to escape saddle points efficiently") is plain
gradient descent that, when the gradient is small (‖g‖ ≤ g_thres) and no perturbation is being
tried, jumps to a point drawn uniformly from the ball of radius r around x̃ = x. If t_thres steps
later the loss has not fallen by f_thres below f(x̃), the escape test has failed. Near a strict
saddle, the stuck region is a thin slab around the stable manifold, so a random jump escapes with
high probability, but only *eventually*: the jump's component along the negative-curvature
direction v is about r/√n and grows by (1 + η|λ_min|) per step, so the escape shows in the loss
after about ln(√n · √(f_thres/|λ_min|) / r) / (η|λ_min|) steps, which no fixed t_thres covers in
every dimension and at every curvature (t_thres = 20 fails at n = 1000). The paper's t_thres
(:meth:`PerturbedGD.jin2017`) has that form, from ℓ, ρ and ε, which a default cannot know.

So by default the test never stops the method for good: a failed test returns to x̃, multiplies
the wait by ``backoff`` (2) and jumps again from x̃. At a strict saddle the wait soon exceeds the
escape time (within about 4× the escape time in all); at a minimum the method stays at x̃,
apart from ever rarer trial jumps. ``backoff=None`` is the paper's Algorithm 2: return to x̃ and
stop there (what :meth:`PerturbedGD.jin2017` uses, with its t_thres from the dimension).

Annealed gradient noise (Neelakantan et al. 2015) adds N(0, σₜ²) to every gradient coordinate
with σₜ² = η / (1 + t)^γ before an ordinary SGD step (γ = 0.55 in the paper); the SGD step is
torch's own.
"""

from __future__ import annotations

import math

import torch

from landscope import _checks as checks
from landscope.errors import BadInputError
from landscope.optim._base import PointOptimizer


class PerturbedGD(PointOptimizer):
    """Perturbed gradient descent with its escape test (Jin et al. 2017, Algorithm 2).

    Parameters
    ----------
    lr: step size η (the paper's c/ℓ).
    radius: r, the radius of the uniform ball of a perturbation.
    g_thres, t_thres, f_thres: perturb when ‖g‖ ≤ g_thres and no perturbation is being tried;
        t_thres steps after a perturbation, the escape test fails unless f fell by f_thres.
    backoff: after a failed test, return to x̃, multiply the wait (first t_thres) by this and
        jump again from x̃ (default 2: no permanent stop, see the module); None: return to x̃ and
        stop there for good, as the paper does.
    batched: step the rows of one (S, n) parameter as S independent points.
    generator: torch.Generator of the perturbations (default: a fresh one seeded with 0).

    A step that perturbs moves to x̃ + ξ without a gradient step; the next step takes the
    gradient there (the paper's iteration, one call later). ``row_state["stopped"]`` marks points
    whose escape test failed with ``backoff=None``, ``row_state["wait"]`` holds each point's
    current wait, ``row_state["perturbations"]`` counts the jumps.
    """

    needs_graph = False

    def __init__(self, params, lr: float = 0.01, radius: float = 0.1, g_thres: float = 1e-2,
                 t_thres: int = 20, f_thres: float = 1e-4, backoff: float | None = 2.0, *,
                 batched: bool = False, generator: torch.Generator | None = None):
        for name, value in {"lr": lr, "radius": radius, "g_thres": g_thres,
                            "f_thres": f_thres}.items():
            checks.positive(name, value)
        checks.integer("t_thres", t_thres)
        if backoff is not None and not backoff > 1:
            raise BadInputError(f"backoff={backoff!r}; use a factor > 1, or None to stop at the "
                                "first failed escape test")
        super().__init__(params, {"lr": lr, "radius": radius, "g_thres": g_thres,
                                  "t_thres": int(t_thres), "f_thres": f_thres,
                                  "backoff": backoff}, batched=batched, generator=generator)

    @classmethod
    def jin2017(cls, params, *, ell: float, rho: float, eps: float, delta: float = 0.1,
                delta_f: float = 1.0, c: float = 1.0, **kwargs) -> PerturbedGD:
        """Settings from the paper: ℓ-smooth gradient, ρ-Lipschitz Hessian, target accuracy ε,
        failure probability δ, initial gap Δf ≥ f(x₀) − f*, and the constant c; the escape test
        stops for good (``backoff=None``) unless ``backoff`` is given.

        χ = 3 max(ln(nℓΔf / (cε²δ)), 4); η = c/ℓ; r = √c ε / (χ²ℓ); g_thres = √c ε / χ²;
        f_thres = (c/χ³) √(ε³/ρ); t_thres = χℓ / (c²√(ρε)).
        """
        params = list(params)
        rows = params[0].shape[0] if kwargs.get("batched") else 1
        n = sum(p.numel() for p in params) // rows
        chi = 3 * max(math.log(n * ell * delta_f / (c * eps**2 * delta)), 4)
        return cls(params, lr=c / ell, radius=math.sqrt(c) * eps / (chi**2 * ell),
                   g_thres=math.sqrt(c) * eps / chi**2,
                   t_thres=math.ceil(chi * ell / (c**2 * math.sqrt(rho * eps))),
                   f_thres=c / chi**3 * math.sqrt(eps**3 / rho),
                   **{"backoff": None, **kwargs})

    def _update(self, point):
        o, state = self.param_groups[0], self.row_state
        if not state:
            rows, device = point.rows, point.x.device
            state.update(t=0, judge=torch.full((rows,), -1, device=device),
                         wait=torch.full((rows,), o["t_thres"], device=device),
                         x_tilde=point.x.clone(), f_tilde=point.values.clone(),
                         stopped=torch.zeros(rows, dtype=torch.bool, device=device),
                         perturbations=torch.zeros(rows, dtype=torch.long, device=device))
        t = state["t"]
        failed = (state["judge"] == t) & (point.values - state["f_tilde"] > -o["f_thres"])
        if o["backoff"] is None:
            state["stopped"] |= failed
            retry = torch.zeros_like(failed)
        else:  # back to x̃, a longer wait, and another jump from there
            state["wait"] = torch.where(failed, (state["wait"] * o["backoff"]).ceil().long(),
                                        state["wait"])
            retry = failed
        calm = (point.g.norm(dim=1) <= o["g_thres"]) & (state["judge"] < t)
        jump = (calm | retry) & ~state["stopped"]
        new = point.x - o["lr"] * point.g
        if bool(jump.any()):
            origin = torch.where(retry[:, None], state["x_tilde"], point.x)
            fresh = jump & ~retry  # a retry keeps its x̃ and f(x̃)
            state["x_tilde"] = torch.where(fresh[:, None], point.x, state["x_tilde"])
            state["f_tilde"] = torch.where(fresh, point.values, state["f_tilde"])
            state["judge"] = torch.where(jump, t + state["wait"], state["judge"])
            state["perturbations"] += jump
            new = torch.where(jump[:, None], origin + _ball(point.x, o["radius"],
                                                            self.generator), new)
        state["t"] = t + 1
        return torch.where(state["stopped"][:, None], state["x_tilde"], new)


class NoisyGD(torch.optim.SGD):
    """torch's SGD on gradients with annealed Gaussian noise: g + N(0, η/(1 + t)^γ).

    Parameters
    ----------
    lr, momentum, nesterov, **sgd_kwargs: as for ``torch.optim.SGD``.
    eta, gamma: the noise schedule σₜ² = eta / (1 + t)^gamma (the paper: eta ∈ {0.01, 0.3, 1},
        gamma = 0.55).
    generator: torch.Generator of the noise (default: a fresh one seeded with 0).
    """

    def __init__(self, params, lr: float = 0.01, eta: float = 0.01, gamma: float = 0.55,
                 momentum: float = 0.0, nesterov: bool = False,
                 generator: torch.Generator | None = None, **sgd_kwargs):
        if not eta >= 0 or not gamma >= 0:
            raise BadInputError(f"eta={eta!r}, gamma={gamma!r}; use values ≥ 0")
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov, **sgd_kwargs)
        for group in self.param_groups:
            group.setdefault("eta", eta)
            group.setdefault("gamma", gamma)
            group.setdefault("noise_step", 0)
        device = self.param_groups[0]["params"][0].device
        self.generator = generator or torch.Generator(device=device).manual_seed(0)

    @torch.no_grad()
    def step(self, closure=None):
        """Add the noise to every gradient, then take torch's SGD step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            sigma = math.sqrt(group["eta"] / (1 + group["noise_step"])**group["gamma"])
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.add_(sigma * torch.randn(p.shape, generator=self.generator,
                                                    dtype=p.dtype, device=p.device))
            group["noise_step"] += 1
        super().step()
        return loss


def _ball(x: torch.Tensor, radius: float, generator: torch.Generator) -> torch.Tensor:
    """Points drawn uniformly from the ball of ``radius`` in Rⁿ, one per row of x."""
    rows, n = x.shape
    direction = torch.randn(rows, n, generator=generator, dtype=x.dtype, device=x.device)
    direction = direction / direction.norm(dim=1, keepdim=True)
    u = torch.rand(rows, 1, generator=generator, dtype=x.dtype, device=x.device)
    return radius * u**(1 / n) * direction
