"""Second-order training that stays in the pretrained basin (SPEC 2.3 and 2.4).

ita (Incremental Task Arithmetic): the new module trains alone, at theta_0 + tau_t, with
    penalty (a/2) sum_i F_i tau_i^2, F the base Fisher averaged over the examples of the
    tasks already in the pool (their modules carry it); for the first task it vanishes.
iel (Incremental Ensemble Learning): the new module trains inside the mean composition it
    joins, at theta_0 + (1/T)(sum_{s<t} stopgrad(tau_s) + tau_t), with penalty
    beta [0.5 (1 - 1/T) tau_t' F tau_t - (1/T) tau_t' F sum_{s<t} tau_s], F averaged over
    all T tasks including the current one.

As in the reference implementation the penalty is *decoupled*: each step first moves theta
by a step on the penalty alone, scaled by the schedule's current lr factor, then AdamW steps
on the cross-entropy gradient. The penalty step is taken in its implicit (proximal) form,
which the quadratic penalty allows in closed form: the reference's explicit step diverges
once lr_factor * strength * F_i exceeds 2, which happens on real bases.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ModpoolError
from ..model.delta import Params, weighted_sum
from .fisher import FisherResult, average, diagonal_fisher

DEFAULT_STRENGTH = {"ita": 1.0, "iel": 20.0}


@dataclass
class Penalty:
    mode: str
    fisher: Params
    strength: float
    others: Params | None = None  # iel: sum of the modules joined
    count: int = 1  # iel: T, the modules in the composition including the new one

    def value(self, tau: Params) -> torch.Tensor:
        if self.mode == "ita":
            return 0.5 * self.strength * sum((self.fisher[k] * tau[k].pow(2)).sum() for k in tau)
        inv = 1.0 / self.count
        quad = sum((self.fisher[k] * tau[k].pow(2)).sum() for k in tau)
        cross = sum((self.fisher[k] * tau[k] * self.others[k]).sum() for k in tau)
        return self.strength * (0.5 * (1 - inv) * quad - inv * cross)

    def gradient(self, tau: Params) -> Params:
        if self.mode == "ita":
            return {k: self.strength * self.fisher[k] * tau[k] for k in tau}
        inv = 1.0 / self.count
        return {
            k: self.strength * self.fisher[k] * ((1 - inv) * tau[k] - inv * self.others[k])
            for k in tau
        }

    @torch.no_grad()
    def step(self, theta: Params, params0: Params, factor: float) -> None:
        """The decoupled step on the penalty, in place, taken implicitly (proximal form).

        A plain step `tau -= h * grad` overshoots wherever `h * a * F_i > 2`, and Fisher
        entries of a real base are that large; the implicit step solves
        `tau' = tau - h * grad(tau')` instead, which is stable at any strength and equals
        the plain step to first order in `h * a * F`.
        """
        if self.strength == 0 or factor == 0:
            return
        h = factor * self.strength
        inv = 1.0 / self.count
        for k in theta:
            tau = theta[k] - params0[k]
            if self.mode == "ita":
                tau = tau / (1 + h * self.fisher[k])
            else:
                pull = h * self.fisher[k]
                tau = (tau + pull * inv * self.others[k]) / (1 + pull * (1 - inv))
            theta[k].copy_(params0[k] + tau)

    def weights(self, theta: Params, params0: Params) -> Params:
        """Forward weights: theta itself (ita), or the mean composition it joins (iel)."""
        if self.mode == "ita" or self.others is None:
            return theta
        return {
            k: params0[k] + (self.others[k] + theta[k] - params0[k]) / self.count for k in theta
        }

    def to(self, device) -> Penalty:
        move = lambda d: None if d is None else {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return Penalty(self.mode, move(self.fisher), self.strength, move(self.others), self.count)


@dataclass
class Plan:
    """What shapes a second-order module: its own Fisher, the penalty, the lineage."""

    fisher: FisherResult
    penalty: Penalty | None
    lineage: dict = field(default_factory=dict)


def plan(pool, task, head, cfg, with_modules: list[str] | None, show_progress: bool | None) -> Plan:
    names = with_modules if with_modules is not None else default_partners(pool, cfg.mode)
    partners = []
    for name in names:
        artifact = pool.read(name)
        if not artifact.extra:
            raise ModpoolError(
                f"{name} carries no Fisher ({artifact.meta['mode']} module): "
                f"{cfg.mode} can only build on ita or iel modules"
            )
        if artifact.kind != "nonlinear":
            raise ModpoolError(
                f"{name} is a {artifact.kind} module; {cfg.mode} builds on nonlinear ones"
            )
        partners.append((name, artifact))
    data = task.load("train", pool.base.image_size)
    own = diagonal_fisher(
        pool.base,
        head,
        data,
        cfg.fisher_samples,
        cfg.fisher_exact,
        cfg.seed,
        cfg.fisher_examples,
        show_progress=show_progress,
    )
    lineage = {
        "fisher_from": [
            {"name": n, "sha256": a.sha256, "task": a.meta["task"]} for n, a in partners
        ]
    }
    fishers = [
        ({k: v.float() for k, v in a.extra.items()}, int(a.meta["fisher"]["examples"]))
        for _, a in partners
    ]
    strength = cfg.strength if cfg.strength is not None else DEFAULT_STRENGTH[cfg.mode]
    if cfg.mode == "ita":
        penalty = Penalty("ita", average(fishers), strength) if fishers else None
        return Plan(own, penalty, lineage)
    lineage["joined"] = [n for n, _ in partners]
    fishers.append((own.fisher, own.examples))
    others = (
        weighted_sum([a.tensors for _, a in partners], [1.0] * len(partners)) if partners else None
    )
    if others is None:
        return Plan(own, None, lineage)
    return Plan(own, Penalty("iel", average(fishers), strength, others, len(partners) + 1), lineage)


def default_partners(pool, mode: str) -> list[str]:
    """ita: every module carrying a Fisher; iel: every iel module (the composition joined)."""
    entries = [e for e in pool.entries() if e.type == "module" and "fisher" in e.meta]
    if mode == "iel":
        entries = [e for e in entries if e.meta.get("mode") == "iel"]
    return [e.name for e in entries]
