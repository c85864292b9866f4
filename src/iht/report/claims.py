"""The paper's claims, each checked against a stored study by a stated rule.

No verdict is written in advance: :func:`evaluate_claims` computes each from per-level medians
and IQRs of the stored IHT runs, and every :class:`Claim` carries its numbers and its rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from ..study.config import IHT, StudyConfig
from .study_tables import by_level, fmt, level_iqr, level_medians, spearman, study_runs

__all__ = ["Claim", "Verdict", "evaluate_claims"]

Verdict = Literal["agree", "partly", "disagree", "n/a"]


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, the stored numbers that bear on it, and a computed verdict.

    Attributes:
        claim: the claim, in the words of PAPER_NOTES.md.
        evidence: the numbers behind the verdict.
        verdict: ``agree``, ``partly`` or ``disagree`` by ``rule``; ``n/a`` when the stored
            levels cannot test the claim (e.g. a partial study).
        rule: how the verdict follows from the evidence.
    """

    claim: str
    evidence: str
    verdict: Verdict
    rule: str


def _combine(parts: Sequence[bool | None]) -> Verdict:
    """All parts hold: agree; some hold (or some cannot be checked): partly; none: disagree."""
    known = [p for p in parts if p is not None]
    if not known:
        return "n/a"
    if all(known) and len(known) == len(parts):
        return "agree"
    return "partly" if any(known) else "disagree"


def _claim_learning_rate(runs: pd.DataFrame) -> Claim:
    med = level_medians(runs, "lr")
    rule = (
        "Spearman rank correlation rho between s and the median learning rate per level: "
        "agree if rho >= 0.8, partly if 0 < rho < 0.8, disagree if rho <= 0 "
        "(n/a with fewer than 3 levels)."
    )
    claim = "The estimated learning rate 1/L_hat_2s grows with s (Sec. III, figure of lr vs s)."
    if len(med) < 3:
        return Claim(claim, f"only {len(med)} level(s) stored", "n/a", rule)
    rho = spearman([float(s) for s in med.index], [float(v) for v in med])
    verdict: Verdict = (
        "n/a"
        if math.isnan(rho)
        else ("agree" if rho >= 0.8 else "partly" if rho > 0 else "disagree")
    )
    evidence = f"median lr by level: {by_level(med)}; rho = {fmt(rho, '+.2f')}"
    return Claim(claim, evidence, verdict, rule)


def _claim_train_loss(runs: pd.DataFrame, config: StudyConfig) -> Claim:
    tol = config.tol
    med = level_medians(runs, "train_loss")
    high = med[med.index >= 11]
    claim = (
        f"Training loss settles near {tol:g} (the stopping rule) and stops changing beyond s = 11."
    )
    rule = (
        "Over the levels s >= 11: (a) 'near the tolerance': every median within 20% of tol "
        f"(|median - {tol:g}| <= {0.2 * tol:.3g}); (b) 'stops changing': max - min of the medians "
        f"<= 10% of tol ({0.1 * tol:.3g}). Both: agree; one: partly; neither: disagree."
    )
    if high.empty:
        return Claim(claim, "no level s >= 11 is stored", "n/a", rule)
    near = bool((np.abs(high.to_numpy() - tol) <= 0.2 * tol).all())
    flat: bool | None = None
    spread = float("nan")
    if len(high) >= 2:
        spread = float(high.max() - high.min())
        flat = spread <= 0.1 * tol
    reached = runs[(runs["kind"] == IHT) & (runs["sparsity"] >= 11)]["reached_tol"].mean()
    evidence = (
        f"median training loss {by_level(high)}; spread (max - min) = {fmt(spread, '.3g')}; "
        f"{float(reached):.0%} of these runs reached tol within max_steps = {config.max_steps}"
    )
    if len(med[med.index < 11]):
        evidence += f"; below s = 11: {by_level(med[med.index < 11])}"
    return Claim(claim, evidence, _combine([near, flat]), rule)


def _claim_test_loss(runs: pd.DataFrame) -> Claim:
    med = level_medians(runs, "test_loss")
    high = med[med.index >= 5]
    claim = "Test loss is flat from s = 5."
    rule = (
        "Over the levels s >= 5, r = (max - min of the medians) / (median of the medians): "
        "agree if r <= 0.25, partly if r <= 0.5, disagree otherwise (n/a with < 2 such levels)."
    )
    if len(high) < 2:
        return Claim(claim, f"{len(high)} level(s) s >= 5 stored", "n/a", rule)
    level = float(high.median())
    r = float(high.max() - high.min()) / level if level > 0 else float("inf")
    verdict: Verdict = "agree" if r <= 0.25 else "partly" if r <= 0.5 else "disagree"
    evidence = f"median test loss {by_level(high)}; r = {fmt(r, '.2f')}"
    low = med[med.index < 5]
    if len(low):
        evidence += f"; below s = 5: {by_level(low)}"
    return Claim(claim, evidence, verdict, rule)


def _claim_test_acc(runs: pd.DataFrame, config: StudyConfig) -> Claim:
    n_test = 150 - config.n_train
    point = 1.0 / n_test
    med = level_medians(runs, "test_acc")
    iqr = level_iqr(runs, "test_acc")
    claim = "Test accuracy is almost constant beyond s = 5 and more stable beyond s = 10."
    rule = (
        "(a) 'almost constant': over s >= 5 the medians span at most two test points "
        f"(max - min <= 2/{n_test} = {2 * point:.3f}); (b) 'more stable': the mean IQR (q75 - q25) "
        "over s >= 10 is smaller than over 5 <= s < 10. Both: agree; one (or one not checkable): "
        "partly; neither: disagree."
    )
    high = med[med.index >= 5]
    constant: bool | None = None
    evidence = []
    if len(high) >= 2:
        span = float(high.max() - high.min())
        constant = span <= 2 * point + 1e-12
        evidence.append(
            f"median test accuracy {by_level(high, '.3f')}; span = {span:.3f} "
            f"({span / point:.1f} test points)"
        )
    else:
        evidence.append(f"{len(high)} level(s) s >= 5 stored")
    mid, top = iqr[(iqr.index >= 5) & (iqr.index < 10)], iqr[iqr.index >= 10]
    stabler: bool | None = None
    if len(mid) and len(top):
        stabler = float(top.mean()) < float(mid.mean())
        evidence.append(
            f"mean IQR for 5 <= s < 10: {float(mid.mean()):.3f}, "
            f"for s >= 10: {float(top.mean()):.3f}"
        )
    else:
        evidence.append("IQR comparison needs levels on both sides of s = 10")
    return Claim(claim, "; ".join(evidence), _combine([constant, stabler]), rule)


def _claim_stable(runs: pd.DataFrame, config: StudyConfig) -> Claim:
    iht = runs[runs["kind"] == IHT]
    claim = "The trained points are HT-stable (gradient almost zero)."
    rule = (
        "f = fraction of IHT runs whose trained point passes the HT-stability test "
        f"(unique H_s value, max |grad_i f| on the support <= grad_tol = {config.grad_tol:g}, "
        "off-support ratio < 1): agree if f >= 0.9, partly if f >= 0.5, disagree otherwise."
    )
    if iht.empty:
        return Claim(claim, "no IHT run stored", "n/a", rule)
    frac = float(iht["stable"].astype(bool).mean())
    per_level = iht.groupby("sparsity")["stable"].mean()
    by_s, fracs = per_level.index.tolist(), per_level.to_numpy(dtype=np.float64)
    worst, best = int(np.argmin(fracs)), int(np.argmax(fracs))
    ratio_ok = float((iht["off_support_ratio"] < 1).mean())
    grad_ok = float((iht["max_grad_on_support"] <= config.grad_tol).mean())
    ties = float(iht["tie"].astype(bool).mean())
    evidence = (
        f"{frac:.1%} of {len(iht)} IHT runs stable (lowest level: "
        f"{fracs[worst]:.0%} at s={int(by_s[worst])}, highest: {fracs[best]:.0%} "
        f"at s={int(by_s[best])}); off-support ratio < 1 in {ratio_ok:.1%}; "
        f"max |grad| on the support <= grad_tol in {grad_ok:.1%} (median "
        f"{float(iht['max_grad_on_support'].median()):.2e}); boundary ties in {ties:.1%}; "
        f"{float(iht['reached_tol'].mean()):.1%} stopped by reaching the loss tolerance (the "
        "stopping rule does not wait for a stationary point)"
    )
    verdict: Verdict = "agree" if frac >= 0.9 else "partly" if frac >= 0.5 else "disagree"
    return Claim(claim, evidence, verdict, rule)


def evaluate_claims(frame: pd.DataFrame, config: StudyConfig) -> list[Claim]:
    """Check each claim of the paper against the stored runs, by a stated rule.

    The claims (PAPER_NOTES.md): the learning rate grows with s; training loss settles near
    the tolerance and stops changing beyond s = 11; test loss is flat from s = 5; test
    accuracy is almost constant beyond s = 5 and more stable beyond s = 10; the trained points
    are HT-stable. "Beyond s = k" is read as s >= k. Every verdict is computed from per-level
    medians / IQRs of the IHT runs (the showcase run excluded); each :class:`Claim` carries
    the numbers and the rule.

    Args:
        frame: the stored runs (``ResultStore(dir).load()``).
        config: the study's config (tolerance, grad_tol, test-set size).

    Returns:
        One :class:`Claim` per claim, in the order above.
    """
    runs = study_runs(frame)
    return [
        _claim_learning_rate(runs),
        _claim_train_loss(runs, config),
        _claim_test_loss(runs),
        _claim_test_acc(runs, config),
        _claim_stable(runs, config),
    ]
