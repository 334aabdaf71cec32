"""A trajectory drawn over a frame, with how much of it the frame really holds.

The projection (α, β)ₜ = argmin ‖θₜ − c − Dx‖ (least squares, D = [d₁ d₂]), the explained
fraction Σ‖D xₜ‖² / Σ‖θₜ − c‖², and each point's distance ‖θₜ − c − D xₜ‖ from the plane: a path
that mostly leaves the plane is drawn with the share of it the picture shows.
"""

from __future__ import annotations

import torch

from landscope import directions
from landscope.objective import Objective
from landscope.surface.grid import as_frame
from landscope.surface.record import Projection


def project(obj: Objective, frame, trajectory) -> Projection:
    """Least-squares coordinates of a trajectory in a frame, its distances, the explained part."""
    frame = as_frame(obj, frame, None)
    path = directions.trajectory(obj, trajectory).to(torch.float64)
    c = (obj.theta0 if frame.centre is None else frame.centre).to(torch.float64)
    D = torch.stack([v.to(torch.float64) for v in frame.vectors], 1)
    X = path - c
    coords = torch.linalg.solve(D.T @ D, D.T @ X.T).T
    inside = coords @ D.T
    total = float((X * X).sum())
    explained = float((inside * inside).sum()) / total if total > 0 else 1.0
    distance = torch.linalg.vector_norm(X - inside, dim=1)
    return Projection(coords.cpu().numpy(), distance.cpu().numpy(),
                      torch.linalg.vector_norm(X, dim=1).cpu().numpy(), explained)
