"""Directions to look along: random, normalised, curvature, gradient, PCA, checkpoints.

A picture of the landscape is a slice θ(α, β) = c + α·d₁ + β·d₂ through a centre c. What makes the
choice of d hard is scale: a Gaussian d ~ N(0, I) moves a layer of small weights as far as one of
large weights, and networks with BatchNorm or ReLU are invariant to rescaling a filter, so the same
|α| means a huge change for one filter and none for another. Filter normalisation (Li et al. 2018,
"Visualizing the Loss Landscape of Neural Nets") rescales every filter of d to the norm of the same
filter of θ:  d_f ← d_f · ‖θ_f‖ / ‖d_f‖, a filter being one slice along the first (output) axis of a
weight with two or more axes (a row of a Linear weight, an output channel of a convolution).

Biases and BatchNorm parameters (every one-axis parameter) have no filters. With ``biases="zero"``
(default, as in Li et al.'s figures: ``--xignore biasbn``) the direction is 0 there, so they stay at
their centre values; with ``biases="layer"`` each such vector is rescaled to the norm of the same
vector of θ. (The loss-landscapes package instead rescales each bias entry to |θᵢ| and draws
uniform, all-positive directions; neither is done here.) BatchNorm running statistics are buffers,
not parameters: directions never touch them.

Every maker returns a :class:`Frame`: a centre (or None for the Objective's θ₀), one or two
:class:`Direction` s with the facts needed to reproduce them (kind, seed, normalisation, eigenvalue,
explained variance), a suggested window and named marks (checkpoints) in the frame's coordinates.
:func:`make` picks a maker by name (random, hessian, pca, gradient), as ``landscope surface
--directions`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from landscope import _checks as checks
from landscope._deprecated import renamed
from landscope.errors import BadInputError
from landscope.objective import Objective
from landscope.progress import Progress

NORMS = ("filter", "layer", "none")
BIASES = ("zero", "layer")
KINDS = ("random", "hessian", "pca", "gradient")


@dataclass(frozen=True)
class Direction:
    """One direction d (shape (n,)) and how it was made (``kind`` and ``info``)."""

    vector: torch.Tensor
    kind: str
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "norm": float(torch.linalg.vector_norm(self.vector)),
                **self.info}


@dataclass(frozen=True)
class Frame:
    """A centre and one or two directions: coordinates (α, β) stand for c + α·d₁ + β·d₂.

    ``centre`` None means the Objective's θ₀. ``window`` is a suggested (low, high) per axis;
    ``marks`` name points in these coordinates (e.g. the checkpoints a plane was built through).
    """

    directions: tuple[Direction, ...]
    centre: torch.Tensor | None = None
    window: tuple[tuple[float, float], ...] | None = None
    marks: dict[str, tuple[float, ...]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def vectors(self) -> list[torch.Tensor]:
        return [d.vector for d in self.directions]

    def to_dict(self) -> dict:
        return {"directions": [d.to_dict() for d in self.directions], "window": self.window,
                "marks": self.marks, **self.info}


@renamed(count="dims")
def make(kind: str, obj: Objective, dims: int = 2, *, seed: int = 0, norm: str = "filter",
         biases: str = "zero", path=None, progress: Progress | None = None) -> Frame:
    """The frame of a named kind through θ₀, ``dims`` (1 or 2) directions:

    random: seeded Gaussians, normalised (:func:`random` with ``seed``, ``norm``, ``biases``);
    hessian: the eigenvectors of λ_max and λ_min (:func:`hessian`; a line: v_min alone, the
    direction a saddle escapes along; ``progress``, a :class:`~landscope.progress.Progress` of
    Hessian-vector products, goes to the eigen-solver); pca: the principal directions of the
    training path ``path`` about its last point (:func:`pca`); gradient: −∇L, a line
    (:func:`gradient`).
    """
    checks.choice("kind", kind, KINDS)
    _check_dims(dims)
    if kind == "random":
        return random(obj, dims, seed=seed, norm=norm, biases=biases)
    if kind == "hessian":
        found = hessian(obj, seed=seed, progress=progress)
        return found if dims == 2 else Frame(found.directions[1:], found.centre)
    if kind == "pca":
        if path is None:
            raise BadInputError("kind='pca' needs a training path: path=, the points θ "
                                "training passed through (a (T, n) tensor)")
        return pca(path, dims)
    if dims != 1:
        raise BadInputError("kind='gradient' gives one direction, a line: use dims=1")
    return gradient(obj)


@renamed(count="dims")
def random(obj: Objective, dims: int = 2, *, seed: int = 0, norm: str = "filter",
           biases: str = "zero", centre: torch.Tensor | None = None) -> Frame:
    """``dims`` seeded Gaussian directions, normalised to the parameters at the centre.

    Parameters
    ----------
    obj: the Objective (its parameter layout defines filters and layers).
    dims: 1 (a line) or 2 (a plane).
    seed: the Gaussians are drawn on the CPU from ``torch.Generator().manual_seed(seed)``, so the
        same seed gives the same directions on every device.
    norm: "filter" (Li et al.), "layer" (each parameter tensor to the norm of θ's), or "none".
    biases: for one-axis parameters (biases, BatchNorm weight and bias) under "filter"/"layer":
        "zero" (not moved) or "layer" (rescaled as a whole to the norm of θ's vector).
    centre: the point whose parameters set the scale (default θ₀).

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    >>> obj = Objective.from_model(net, torch.nn.functional.mse_loss,
    ...                            (torch.ones(4, 3), torch.zeros(4, 2)))
    >>> frame = random(obj, 2, seed=0)
    >>> [d.kind for d in frame.directions], frame.directions[0].vector[-2:].tolist()
    (['random', 'random'], [0.0, 0.0])
    """
    _check_dims(dims)
    theta = _centre(obj, centre)
    generator = torch.Generator().manual_seed(seed)
    found = []
    for index in range(dims):
        raw = torch.randn(obj.n, generator=generator, dtype=torch.float64)
        vector = normalise(obj, raw.to(obj.device, obj.dtype), norm, biases=biases, centre=theta)
        found.append(Direction(vector, "random", {"distribution": "gaussian", "seed": seed,
                                                  "index": index, "normalisation": norm,
                                                  "biases": biases}))
    return Frame(tuple(found), centre)


def normalise(obj: Objective, vector: torch.Tensor, norm: str = "filter", *,
              biases: str = "zero", centre: torch.Tensor | None = None) -> torch.Tensor:
    """``vector`` rescaled filter by filter (or layer by layer) to the norms of θ at the centre.

    A filter of θ with norm 0 gives a zero filter in the result. Raises if nothing is left (every
    parameter is one-axis and ``biases="zero"``, as for an analytic function: use norm="none").
    """
    checks.choice("norm", norm, NORMS)
    checks.choice("biases", biases, BIASES)
    vector = _vector(obj, vector, "vector")
    if norm == "none":
        return vector.clone()
    theta = _centre(obj, centre)
    out = torch.zeros_like(vector)
    pieces = zip(obj.unflatten(vector).values(), obj.unflatten(theta).values(),
                 obj.unflatten(out).values(), strict=True)
    for d, w, o in pieces:
        if d.dim() <= 1 and biases == "zero":
            continue  # stays 0: biases and BatchNorm parameters are not moved
        if d.dim() <= 1 or norm == "layer":
            o.copy_(d * _ratio(w.norm(), d.norm()))
        else:
            rows_d, rows_w = d.reshape(d.shape[0], -1), w.reshape(w.shape[0], -1)
            scale = _ratio(rows_w.norm(dim=1), rows_d.norm(dim=1))
            o.copy_((rows_d * scale[:, None]).reshape(d.shape))
    if not torch.any(out != 0):
        raise BadInputError(
            f"the direction is zero after {norm} normalisation: every parameter has one axis "
            "(biases, BatchNorm, or an analytic function's x) and biases='zero' leaves those "
            "fixed. Use norm='none' for an analytic function, or biases='layer'."
        )
    return out


def hessian(obj: Objective, *, centre: torch.Tensor | None = None, seed: int = 0,
            **spectrum_options) -> Frame:
    """The unit eigenvectors of the largest and of the smallest (most negative) Hessian eigenvalue.

    In the plane through (v_max, v_min) a saddle looks like a saddle: L ≈ L₀ + gᵀ(αv + βw) +
    ½(λ_max α² + λ_min β²). Each eigenvector's sign makes its largest entry positive; eigenvalue
    and residual ‖Hv − λv‖ are in its ``info``. Extra options go to :func:`landscope.spectrum`.
    """
    from landscope.spectrum import spectrum

    theta = _centre(obj, centre)
    spec = spectrum(obj, k=1, which="both", theta=theta, seed=seed, **spectrum_options)
    found = []
    for pairs, kind in ((spec.largest, "hessian_max"), (spec.smallest, "hessian_min")):
        v = pairs.vectors[:, 0].to(obj.device, obj.dtype)
        v = v * torch.sign(v[torch.argmax(v.abs())]) / torch.linalg.vector_norm(v)
        found.append(Direction(v, kind, {"eigenvalue": float(pairs.values[0]),
                                         "residual": float(pairs.residuals[0]),
                                         "method": spec.method}))
    return Frame(tuple(found), centre)


def gradient(obj: Objective, *, centre: torch.Tensor | None = None, unit: bool = False) -> Frame:
    """The steepest-descent direction d = −∇L(c) (unit length if ``unit``).

    Unnormalised, the coordinate t of c + t·d is a learning rate: t = η is one gradient step.
    """
    theta = _centre(obj, centre)
    g = obj.grad(theta)
    size = torch.linalg.vector_norm(g)
    if size == 0:
        raise BadInputError("the gradient is exactly zero at the centre; it gives no direction")
    d = -g / size if unit else -g
    return Frame((Direction(d, "gradient", {"unit": unit, "grad_norm": float(size)}),), centre)


@renamed(count="dims")
def pca(trajectory, dims: int = 2, *, centre: torch.Tensor | None = None) -> Frame:
    """``dims`` principal directions of a training path about a centre (default: its last
    point).

    The directions are the top right singular vectors of the matrix of θₜ − c (rows), and
    ``explained_variance`` the fraction of Σ‖θₜ − c‖² each keeps. Li et al. centre the rows on their
    mean first (sklearn's PCA); here they are not, because the plane must pass through the centre
    the picture is drawn around, and the uncentred SVD is the plane through c that keeps most of the
    path. Signs make the path start at negative coordinates.
    """
    path = _as_path(trajectory)
    c = path[-1] if centre is None else torch.as_tensor(centre).to(path)
    if c.shape != path.shape[1:]:
        raise BadInputError(f"centre has shape {tuple(c.shape)}; the trajectory points have "
                            f"{path.shape[1]} parameters")
    M = (path - c).to(torch.float64)
    _check_dims(dims)
    if dims > min(M.shape):
        raise BadInputError(f"dims={dims}; use at most the number of points")
    _, S, Vh = torch.linalg.svd(M, full_matrices=False)
    if S[dims - 1] == 0:
        raise BadInputError(f"the trajectory spans fewer than {dims} directions about the centre")
    explained = (S**2 / (S**2).sum()).tolist()
    found, coords = [], []
    for i in range(dims):
        v = Vh[i]
        v = -v if float(M[0] @ v) > 0 else v
        coords.append(M @ v)
        found.append(Direction(v.to(path.dtype), "pca", {"component": i,
                                                         "explained_variance": explained[i]}))
    window = tuple(_padded(float(x.min()), float(x.max())) for x in coords)
    return Frame(tuple(found), c, window, {},
                 {"explained_variance": explained[:dims],
                  "explained_total": sum(explained[:dims])})


def line(a: torch.Tensor, b: torch.Tensor, *, names: Sequence[str] = ("a", "b")) -> Frame:
    """The line through two parameter vectors: c = a, d = b − a (a at t = 0, b at t = 1)."""
    a, b = _as_path([a, b])
    if torch.equal(a, b):
        raise BadInputError("the two points are equal; a line needs two different points")
    return Frame((Direction(b - a, "line", {"through": list(names)}),), a, ((-0.5, 1.5),),
                 {names[0]: (0.0,), names[1]: (1.0,)})


def plane(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, *,
          names: Sequence[str] = ("a", "b", "c")) -> Frame:
    """The plane through three parameter vectors, centred at a.

    d₁ = b − a, and d₂ the part of c − a orthogonal to d₁, rescaled to ‖d₁‖, so the picture is
    not distorted: a = (0, 0), b = (1, 0), c = (⟨c−a, d₁⟩/‖d₁‖², ‖d₂'‖/‖d₁‖).
    """
    a, b, c = _as_path([a, b, c])
    d1, u = (b - a).to(torch.float64), (c - a).to(torch.float64)
    size = torch.linalg.vector_norm(d1)
    if size == 0:
        raise BadInputError("a and b are equal; a plane needs three points not on one line")
    along = float(u @ d1) / float(size) ** 2
    ortho = u - along * d1
    height = float(torch.linalg.vector_norm(ortho)) / float(size)
    if height <= 1e-12 * max(1.0, abs(along)):
        raise BadInputError("the three points lie on one line; they span no plane")
    d2 = ortho * (size / torch.linalg.vector_norm(ortho))
    marks = {names[0]: (0.0, 0.0), names[1]: (1.0, 0.0), names[2]: (along, height)}
    xs, ys = [0.0, 1.0, along], [0.0, 0.0, height]
    window = (_padded(min(xs), max(xs)), _padded(min(ys), max(ys)))
    info = {"through": list(names)}
    return Frame((Direction(d1.to(a.dtype), "plane", info), Direction(d2.to(a.dtype), "plane",
                                                                      info)), a, window, marks)


def frame(*directions, centre: torch.Tensor | None = None) -> Frame:
    """A frame from your own vectors or :class:`Direction` s (one or two), e.g. (gradient, v_min).

    Examples
    --------
    >>> frame(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])).directions[1].kind
    'custom'
    """
    if len(directions) not in (1, 2):
        raise BadInputError(f"got {len(directions)} directions; a frame has 1 or 2")
    found = tuple(d if isinstance(d, Direction) else
                  Direction(torch.as_tensor(d).detach(), "custom") for d in directions)
    return Frame(found, centre)


def flatten(obj: Objective, state) -> torch.Tensor:
    """θ of a model or a state dict, in the Objective's parameter order (for trajectories)."""
    names = list(obj.unflatten().keys())
    if isinstance(state, torch.nn.Module):
        state = dict(state.named_parameters())
    missing = [name for name in names if name not in state]
    if missing:
        raise BadInputError(f"the state has no parameter(s) {', '.join(missing[:5])}; it does not "
                            "belong to this model")
    return torch.cat([state[name].detach().reshape(-1) for name in names]).to(obj.device,
                                                                               obj.dtype)


def trajectory(obj: Objective, points) -> torch.Tensor:
    """A training path as a (T, n) tensor; points may be θ vectors, state dicts or modules."""
    rows = [flatten(obj, p) if isinstance(p, (dict, torch.nn.Module)) else p for p in points]
    path = _as_path(rows)
    if path.shape[1] != obj.n:
        raise BadInputError(f"the trajectory points have {path.shape[1]} parameters; this "
                            f"objective has n = {obj.n}")
    return path.to(obj.device, obj.dtype)


# ---------------------------------------------------------------------- helpers
def _check_dims(dims) -> None:
    if dims not in (1, 2):
        raise BadInputError(f"dims={dims}; a frame has 1 (line) or 2 (plane) directions")


def _centre(obj: Objective, centre) -> torch.Tensor:
    return obj.theta0 if centre is None else _vector(obj, centre, "centre")


def _vector(obj: Objective, vector, name: str) -> torch.Tensor:
    vector = torch.as_tensor(vector)
    if vector.shape != (obj.n,):
        raise BadInputError(f"{name} has shape {tuple(vector.shape)}; this objective has "
                            f"n = {obj.n} parameters, so it must have shape ({obj.n},)")
    if not torch.isfinite(vector).all():
        raise BadInputError(f"{name} holds NaN or infinite entries")
    return vector.detach().to(obj.device, obj.dtype)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.zeros_like(numerator))


def _as_path(points) -> torch.Tensor:
    if isinstance(points, torch.Tensor):
        path = points.detach()
    else:
        rows = [torch.as_tensor(p).detach().reshape(-1) for p in points]
        sizes = sorted({r.numel() for r in rows})
        if len(sizes) > 1:
            raise BadInputError(f"the points have different parameter counts {sizes}; they must "
                                "come from the same model")
        path = torch.stack(rows) if rows else torch.empty(0, 0)
    if path.dim() != 2 or path.shape[0] < 2:
        raise BadInputError(f"a trajectory needs at least two points as a (T, n) tensor; got "
                            f"shape {tuple(path.shape)}")
    if not torch.isfinite(path).all():
        raise BadInputError("the trajectory holds NaN or infinite entries")
    return path


def _padded(low: float, high: float, margin: float = 0.25) -> tuple[float, float]:
    pad = margin * max(high - low, 1e-12)
    return (low - pad, high + pad)
