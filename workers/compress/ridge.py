"""Ridge least squares on normal equations, and the relative error that judges a fit.

Reconstruction (:mod:`workers.compress.reconstruct`) sums ``X^T X`` and
``X^T Y`` over row sets and solves them for several ridge weights; this
linear algebra needs no network or hook, so it lives on its own.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def normal_equations(inputs: Tensor, target: Tensor, *, with_bias: bool) -> tuple[Tensor, Tensor]:
    """``(X^T X, X^T Y)`` with a column of ones appended to ``X`` for a bias.

    Sums over rows, so the equations of two row sets add up to those of their union.
    """
    if with_bias:
        inputs = torch.cat([inputs, inputs.new_ones(inputs.shape[0], 1)], 1)
    return inputs.T @ inputs, inputs.T @ target


def ridge_solve(
    gram: Tensor, rhs: Tensor, penalty: float, *, with_bias: bool
) -> tuple[Tensor, Tensor | None]:
    """Ridge solution ``(W, b)`` of the normal equations; the bias is not penalised.

    The penalty is relative to the mean diagonal of the weights' Gram matrix
    (the mean eigenvalue), so it does not depend on the activations' scale.
    """
    features = gram.shape[0] - int(with_bias)
    diagonal = torch.diagonal(gram)[:features]
    scale = float(diagonal.mean())
    ridge = torch.zeros_like(torch.diagonal(gram))
    ridge[:features] = penalty * (scale if scale > 0 else 1.0)
    system = gram + torch.diag(ridge)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        solution = torch.cholesky_solve(rhs, factor)
    else:  # singular (no ridge, too few rows): the minimum-norm solution
        solution = torch.linalg.lstsq(system.cpu(), rhs.cpu(), driver="gelsd").solution
        solution = solution.to(rhs.device)
    return solution[:features].T, (solution[features] if with_bias else None)


def predict(inputs: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return inputs @ weight.T if bias is None else inputs @ weight.T + bias


def relative_error(prediction: Tensor, target: Tensor) -> float:
    norm = float(torch.linalg.vector_norm(target))
    error = float(torch.linalg.vector_norm(prediction - target))
    if norm == 0.0:
        return 0.0 if error == 0.0 else math.inf
    return error / norm
