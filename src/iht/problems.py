"""Stacked training problems for the many-runs engine: R runs of one model on one data set.

Every run of a study uses the same N points; a run's split is only a weight per point
(1/n_train on its training points, 0 elsewhere) and its standardisation (the training rows'
mean and std). Two implementations of the same maths:

- :class:`LinearSoftmax`: closed-form loss and gradient of a linear layer + softmax
  cross-entropy. Standardisation is folded into the parameters, so the forward pass of all
  runs is one matrix product (N, d+1) @ (d+1, C R) and the gradient another.
- :class:`VmapModule`: any ``nn.Module`` through ``torch.func.functional_call`` + ``vmap`` +
  autograd; slow but generic, and the reference the closed form is tested against.

Parameter layout is ``model.parameters()`` order flattened; for ``nn.Linear(d, C)`` that is W
(C x d, row-major) then b (C).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

__all__ = ["LinearSoftmax", "SplitData", "VmapModule"]


@dataclass(frozen=True)
class SplitData:
    """One data set and R runs' splits.

    Attributes:
        X: raw features (N, d), float64.
        y: labels (N,) in 0..C-1.
        train: bool (R, N), True on each run's training points (the rest is its test set).
    """

    X: NDArray[np.float64]
    y: NDArray[np.int64]
    train: NDArray[np.bool_]

    @property
    def n_classes(self) -> int:
        return int(self.y.max()) + 1

    def moments(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Per-run training mean and population std (R, d); constant columns get std 1."""
        w = self.train.astype(np.float64)
        n = w.sum(axis=1, keepdims=True)
        mean = w @ self.X / n
        # Two-pass variance (E[(x - mean)^2]) for accuracy.
        var = np.einsum("rn,rnd->rd", w, (self.X[None, :, :] - mean[:, None, :]) ** 2) / n
        std = np.sqrt(var)
        return mean, np.where(std > 0, std, 1.0)

    def standardised(self) -> NDArray[np.float64]:
        """Per-run standardised features (R, N, d)."""
        mean, std = self.moments()
        return (self.X[None, :, :] - mean[:, None, :]) / std[:, None, :]


def _accuracy(correct: Tensor, member: Tensor) -> Tensor:
    """Share of correct predictions among member points, per run; counted exactly (float64)."""
    hits = (correct & member).sum(dim=0).to(torch.float64)
    return hits / member.sum(dim=0).clamp(min=1).to(torch.float64)


def _weights(mask: NDArray[np.bool_]) -> NDArray[np.float64]:
    w = mask.astype(np.float64)
    return w / np.maximum(w.sum(axis=1, keepdims=True), 1.0)


class LinearSoftmax:
    r"""R linear-softmax classifiers, closed form.

    With run r's standardisation folded in, W' = W diag(1/sd_r), b' = b - W' mu_r, logits
    z = W' x + b'. For f_r = \sum_n w_{rn} CE(z_n, y_n) and D_n = w_{rn}(softmax(z_n) - e_{y_n}),
    A = \sum_n D_n x_n^T, B = \sum_n D_n give grad_b f = B and
    grad_W f = (A - B mu_r^T) diag(1/sd_r).
    """

    def __init__(self, data: SplitData, *, dtype: torch.dtype = torch.float32) -> None:
        self.n_runs, self.n_points = data.train.shape
        self.n_features = data.X.shape[1]
        self.n_classes = data.n_classes
        self.size = self.n_classes * (self.n_features + 1)
        self.dtype = dtype
        mean, std = data.moments()
        ones = np.ones((self.n_points, 1))
        self.x_aug = torch.tensor(np.hstack([data.X, ones]), dtype=dtype)  # (N, d+1)
        self.y = torch.tensor(data.y, dtype=torch.int64)
        self.onehot = nn.functional.one_hot(self.y, self.n_classes).to(dtype)  # (N, C)
        self.mean = torch.tensor(mean, dtype=dtype)
        self.inv_std = torch.tensor(1.0 / std, dtype=dtype)
        self.w_train = torch.tensor(_weights(data.train), dtype=dtype)  # (R, N)
        self.w_test = torch.tensor(_weights(~data.train), dtype=dtype)
        self._cache_rows: Tensor | None = None
        self._cache: tuple[Tensor, Tensor, Tensor] = (self.mean, self.inv_std, self.w_train.T)

    def _gathered(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # The engine changes ``rows`` only when it drops finished runs: gather once per change.
        if rows is not self._cache_rows:
            self._cache_rows = rows
            self._cache = (self.mean[rows], self.inv_std[rows], self.w_train[rows].T.contiguous())
        return self._cache

    def _logits(self, theta: Tensor, mean: Tensor, inv_std: Tensor) -> Tensor:
        n_runs, c, d = theta.shape[0], self.n_classes, self.n_features
        w = theta[:, : c * d].reshape(n_runs, c, d) * inv_std[:, None, :]
        b = theta[:, c * d :] - (w * mean[:, None, :]).sum(dim=-1)
        eff = torch.cat([w, b.unsqueeze(-1)], dim=-1).reshape(n_runs * c, d + 1)
        return (self.x_aug @ eff.T).reshape(self.n_points, n_runs, c)  # (N, R, C)

    def loss_and_grad(self, theta: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Training loss (R,) and gradient (R, P) of the runs ``rows`` at ``theta``."""
        mean, inv_std, w_nr = self._gathered(rows)
        n_runs, c, d = theta.shape[0], self.n_classes, self.n_features
        z = self._logits(theta, mean, inv_std)
        log_p = torch.log_softmax(z, dim=-1)
        nll = -(log_p * self.onehot[:, None, :]).sum(dim=-1)  # (N, R)
        loss = (nll * w_nr).sum(dim=0)
        resid = (log_p.exp() - self.onehot[:, None, :]) * w_nr[:, :, None]  # (N, R, C)
        g = (resid.reshape(self.n_points, n_runs * c).T @ self.x_aug).reshape(n_runs, c, d + 1)
        g_w, g_b = g[..., :d], g[..., d]
        g_w = (g_w - g_b[..., None] * mean[:, None, :]) * inv_std[:, None, :]
        return loss, torch.cat([g_w.reshape(n_runs, c * d), g_b], dim=1)

    def metrics(self, theta: Tensor, rows: Tensor) -> dict[str, Tensor]:
        """Train/test loss and accuracy (R,) each, of runs ``rows`` at ``theta``."""
        z = self._logits(theta, self.mean[rows], self.inv_std[rows])
        log_p = torch.log_softmax(z, dim=-1)
        nll = -(log_p * self.onehot[:, None, :]).sum(dim=-1)  # (N, R)
        correct = z.argmax(dim=-1) == self.y[:, None]  # (N, R)
        out = {}
        for split, w in (("train", self.w_train[rows].T), ("test", self.w_test[rows].T)):
            out[f"{split}_loss"] = (nll * w).sum(dim=0)
            out[f"{split}_acc"] = _accuracy(correct, w > 0)
        return out


class VmapModule:
    """R copies of any ``nn.Module`` trained on per-run standardised data, via vmap + autograd.

    The loss is softmax cross-entropy weighted by each run's training weights.
    """

    def __init__(
        self, module: nn.Module, data: SplitData, *, dtype: torch.dtype = torch.float64
    ) -> None:
        self.module = module.to(dtype)
        self.names = [n for n, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.size = sum(p.numel() for p in module.parameters())
        self.x = torch.tensor(data.standardised(), dtype=dtype)  # (R, N, d)
        self.y = torch.tensor(data.y, dtype=torch.int64)
        self.w_train = torch.tensor(_weights(data.train), dtype=dtype)
        self.w_test = torch.tensor(_weights(~data.train), dtype=dtype)

        def unflat(theta: Tensor) -> dict[str, Tensor]:
            out, offset = {}, 0
            for name, shape in zip(self.names, self.shapes, strict=True):
                n = int(np.prod(shape))
                out[name] = theta[offset : offset + n].reshape(shape)
                offset += n
            return out

        def loss_one(theta: Tensor, x: Tensor, w: Tensor) -> Tensor:
            logits = functional_call(self.module, unflat(theta), (x,))
            nll = nn.functional.cross_entropy(logits, self.y, reduction="none")
            return (nll * w).sum()

        def logits_one(theta: Tensor, x: Tensor) -> Tensor:
            return functional_call(self.module, unflat(theta), (x,))

        self._grad_and_loss = vmap(grad_and_value(loss_one))
        self._logits = vmap(logits_one)

    def loss_and_grad(self, theta: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        grad, loss = self._grad_and_loss(theta, self.x[rows], self.w_train[rows])
        return loss, grad

    def metrics(self, theta: Tensor, rows: Tensor) -> dict[str, Tensor]:
        logits = self._logits(theta, self.x[rows])  # (R, N, C)
        nll = nn.functional.cross_entropy(
            logits.transpose(1, 2), self.y.expand(theta.shape[0], -1), reduction="none"
        )
        correct = (logits.argmax(dim=-1) == self.y).T  # (N, R)
        out = {}
        for split, w in (("train", self.w_train[rows]), ("test", self.w_test[rows])):
            out[f"{split}_loss"] = (nll * w).sum(dim=1)
            out[f"{split}_acc"] = _accuracy(correct, (w > 0).T)
        return out
