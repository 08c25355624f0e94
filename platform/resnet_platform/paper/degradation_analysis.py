"""The grid's results per net over seeds, the mean curves, and the verdict on the paper's ordering."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from .degradation_trial import SeedResult
from .tables import NamedNet, TrialResult


@dataclass
class NetSummary(NamedNet):
    """One net over its seeds."""

    arch: str
    params: int
    seeds: list[int]
    train_errors: list[float]  # last epoch's (running, train mode: what Figure 6 plots), per seed
    test_errors: list[float]
    seconds: list[float]
    mlflow_run_ids: list[str | None] = field(default_factory=list)

    @property
    def train_error(self) -> float:
        return statistics.fmean(self.train_errors)

    @property
    def test_error(self) -> float:
        return statistics.fmean(self.test_errors)

    @staticmethod
    def _std(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    @property
    def train_error_std(self) -> float:
        return self._std(self.train_errors)

    @property
    def test_error_std(self) -> float:
        return self._std(self.test_errors)

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "label": self.label,
            "depth": self.depth,
            "residual": self.residual,
            "params": self.params,
            "seeds": self.seeds,
            "train_errors": self.train_errors,
            "test_errors": self.test_errors,
            "train_error_mean": self.train_error,
            "train_error_std": self.train_error_std,
            "test_error_mean": self.test_error,
            "test_error_std": self.test_error_std,
            "seconds": self.seconds,
            "mlflow_run_ids": self.mlflow_run_ids,
        }


def summarize(results: list[SeedResult]) -> list[NetSummary]:
    """Per net, seeds in order; nets as the paper's figure orders them (plain, then ResNets, by depth)."""
    by_arch: dict[str, list[SeedResult]] = {}
    for r in results:
        by_arch.setdefault(r.result.arch, []).append(r)
    out = []
    for arch, rs in by_arch.items():
        rs = sorted(rs, key=lambda r: r.seed)
        out.append(
            NetSummary(
                arch=arch,
                params=rs[0].result.params,
                seeds=[r.seed for r in rs],
                train_errors=[r.result.train_error for r in rs],
                test_errors=[r.result.test_error for r in rs],
                seconds=[r.seconds for r in rs],
                mlflow_run_ids=[r.result.mlflow_run_id for r in rs],
            )
        )
    return sorted(out, key=lambda s: (s.residual, s.depth))


def mean_curves(results: list[SeedResult]) -> list[TrialResult]:
    """One TrialResult per net whose history is the mean over seeds, epoch by epoch (the epochs
    every seed has)."""
    by_arch: dict[str, list[SeedResult]] = {}
    for r in results:
        by_arch.setdefault(r.result.arch, []).append(r)
    out = []
    for arch, rs in by_arch.items():
        epochs = min(len(r.result.history) for r in rs)
        history = []
        for i in range(epochs):
            rows = [r.result.history[i] for r in rs]
            history.append(
                {
                    "epoch": rows[0]["epoch"],
                    "step": statistics.fmean(float(h["step"]) for h in rows),
                    "train_top1_error": statistics.fmean(float(h["train_top1_error"]) for h in rows),
                    "val_top1_error": statistics.fmean(float(h["val_top1_error"]) for h in rows),
                }
            )
        out.append(
            TrialResult(
                arch=arch,
                params=rs[0].result.params,
                test_error=statistics.fmean(r.result.test_error for r in rs),
                train_error=statistics.fmean(r.result.train_error for r in rs),
                history=history,
            )
        )
    return sorted(out, key=lambda r: (r.residual, r.depth))


def verdict(nets: list[NetSummary], margin: float) -> dict:
    """Whether the paper's ordering holds in training error (last epoch, mean over seeds): the
    deepest plain net above the shallowest, and the deepest ResNet not above the shallowest by more
    than ``margin``. Also counted seed by seed."""
    by = {(n.residual, n.depth): n for n in nets}
    depths = sorted({n.depth for n in nets})
    lo, hi = depths[0], depths[-1]
    out: dict[str, Any] = {
        "metric": "training error of the last epoch (train mode, as Figure 6 plots it), mean over seeds",
        "shallow": lo,
        "deep": hi,
        "margin": margin,
    }
    checks = {
        "plain": lambda deep, shallow: deep > shallow,
        "resnet": lambda deep, shallow: deep <= shallow + margin,
    }
    for residual, family in ((False, "plain"), (True, "resnet")):
        a, b = by.get((residual, lo)), by.get((residual, hi))
        if a is None or b is None:
            out[family] = None
            continue
        seeds = [s for s in a.seeds if s in b.seeds]
        per_seed = [
            checks[family](b.train_errors[b.seeds.index(s)], a.train_errors[a.seeds.index(s)]) for s in seeds
        ]
        out[family] = {
            "shallow_train_error": a.train_error,
            "deep_train_error": b.train_error,
            "holds": checks[family](b.train_error, a.train_error),
            "seeds_holding": sum(per_seed),
            "seeds": len(seeds),
        }
    plain, resnet = out["plain"], out["resnet"]
    out["ordering_holds"] = bool(plain and resnet and plain["holds"] and resnet["holds"])
    return out
