"""Statistics used by several stages: rank correlation, the paired bootstrap and interval formatting — each once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties = Pearson of the ranks); NaN pairs dropped.

    NaN when fewer than 3 pairs remain or either side is constant.
    """
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 3:
        return float("nan")
    ra = pd.Series(a).rank(method="average").to_numpy()
    rb = pd.Series(b).rank(method="average").to_numpy()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


# ============================================================================================ the paired bootstrap

@dataclass
class Bootstrap:
    """Per method: the point estimate (mean over seeds) and ``draws`` (B resampled means) of every metric."""

    point: dict[str, dict[str, float]]
    draws: dict[str, dict[str, np.ndarray]]
    ci: float

    def interval(self, method: str, metric: str) -> tuple[float, float]:
        d = self.draws[method][metric]
        lo = (1 - self.ci) / 2
        return float(np.quantile(d, lo)), float(np.quantile(d, 1 - lo))

    def delta(self, a: str, b: str, metric: str) -> dict[str, float]:
        """``a − b`` with its paired interval (same resampled scenes and seed positions)."""
        d = self.draws[a][metric] - self.draws[b][metric]
        lo = (1 - self.ci) / 2
        return {"delta": self.point[a][metric] - self.point[b][metric], "lo": float(np.quantile(d, lo)),
                "hi": float(np.quantile(d, 1 - lo)), "p_le_0": float(np.mean(d <= 0))}

    def mde(self, a: str, b: str, metric: str, power: float = 0.8) -> float:
        """Minimum detectable paired difference ``a − b`` at this interval's level and ``power``.

        The normal approximation (z_{1−(1−ci)/2} + z_{power}) · SE, with SE the standard deviation of the paired
        bootstrap draws, so it carries the scene and the seed variance this comparison actually has. A true
        difference this large would give an interval excluding 0 with probability ``power``.
        """
        if not 0 < power < 1:
            raise ValueError(f"power={power!r} must be in (0, 1)")
        z = NormalDist()
        se = float(np.std(self.draws[a][metric] - self.draws[b][metric], ddof=1))
        return (z.inv_cdf(1 - (1 - self.ci) / 2) + z.inv_cdf(power)) * se

    def recovered(self, method: str, metric: str, upper: str, lower: str) -> dict[str, float]:
        """Share of the gain ``upper − lower`` that ``method`` recovers: (method − lower) / (upper − lower).

        The interval is the paired bootstrap's, over draws whose denominator is not 0; it is wide (and
        meaningless) when ``upper`` barely beats ``lower``, so read it next to ``delta(upper, lower)``.
        """
        num = self.draws[method][metric] - self.draws[lower][metric]
        den = self.draws[upper][metric] - self.draws[lower][metric]
        point_den = self.point[upper][metric] - self.point[lower][metric]
        point = (self.point[method][metric] - self.point[lower][metric]) / point_den if point_den else float("nan")
        ok = den != 0
        if not ok.any():
            return {"share": point, "lo": float("nan"), "hi": float("nan")}
        r = num[ok] / den[ok]
        lo = (1 - self.ci) / 2
        return {"share": float(point), "lo": float(np.quantile(r, lo)), "hi": float(np.quantile(r, 1 - lo))}

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        out: dict[str, dict[str, dict[str, float]]] = {}
        for m in self.point:
            out[m] = {}
            for k, v in self.point[m].items():
                lo, hi = self.interval(m, k)
                out[m][k] = {"mean": v, "lo": lo, "hi": hi}
        return out

    def delta_frame(self, pairs: Sequence[tuple[str, str]], metrics: Sequence[str]):
        """``a − b`` with its paired interval for every (a, b) in ``pairs`` and metric: one row each."""
        return pd.DataFrame([{"comparison": f"{a} − {b}", "metric": k, **self.delta(a, b, k)}
                             for a, b in pairs for k in metrics]).set_index(["comparison", "metric"])


def resample(stats: dict[str, np.ndarray], metrics: Callable[[np.ndarray], dict[str, np.ndarray]],
             n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> Bootstrap:
    """The paired seed-and-scene bootstrap of every metric of every method.

    ``stats``: method -> ``(n_seeds, n_scenes, k)`` per-scene counts (all methods on the same scenes);
    ``metrics``: summed counts ``(..., k)`` -> metric name -> values ``(...)``. Each draw resamples the scenes (one
    resample shared by every method, so differences are paired) and, per method, its seeds (methods with the same
    number of seeds share the seed positions); the metric of every drawn seed is computed on the drawn scenes and
    averaged over seeds. The point estimate is the mean over seeds of each seed's metric on all scenes.
    """
    n = {s.shape[1] for s in stats.values()}.pop()
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)   # (B, n)
    seed_pos: dict[int, np.ndarray] = {}
    point, draws = {}, {}
    for method, st in stats.items():
        k = st.shape[0]
        if k not in seed_pos:
            seed_pos[k] = rng.integers(k, size=(n_boot, k))
        per_seed = np.einsum("bn,snk->bsk", weights, st)                                # (B, seeds, STATS)
        picked = per_seed[np.arange(n_boot)[:, None], seed_pos[k]]
        mets = metrics(picked)
        draws[method] = {name: v.mean(axis=1) for name, v in mets.items()}
        point[method] = {name: float(v.mean()) for name, v in metrics(st.sum(axis=1)).items()}
    return Bootstrap(point, draws, ci)


def fmt_interval(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
