"""A/B experiment read-out: per-variant CTR with confidence intervals, a verdict against the control, and
the sample size still needed.

The unit is a response that got feedback (a "trial"); a success is a response with a positive reaction.
Each variant is compared with the control by a two-sided two-proportion z-test. The verdict is plain:

* ``significant gain`` / ``harmful``: the difference is significant at ``alpha`` (better / worse);
* ``not yet``: not significant; ``needed`` says how many trials per variant would detect a relative lift of
  ``mde`` (minimum detectable effect) with ``power``, and ``remaining`` how many are still missing;
* ``control``: the reference row.
"""

from __future__ import annotations

import math

import polars as pl
from scipy.stats import norm

VERDICTS = ("control", "significant gain", "harmful", "not yet")
CONTROL_NAMES = ("control", "baseline", "a")


def wilson_interval(successes: int, trials: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion (well behaved at 0, 1 and small ``trials``)."""
    if trials == 0:
        return (float("nan"), float("nan"))
    z = norm.ppf(1 - alpha / 2)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_p_value(s1: int, n1: int, s2: int, n2: int) -> float:
    """Two-sided p-value of H0: p1 == p2 (pooled z-test); 1.0 when undefined (no trials, or no variance)."""
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (s2 / n2 - s1 / n1) / se
    return float(2 * norm.sf(abs(z)))


def sample_size(p: float, mde: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Trials per variant to detect a relative change ``mde`` from base rate ``p`` (two-sided)."""
    if not 0 < p < 1 or mde <= 0:
        return 0
    q = min(max(p * (1 + mde), 1e-9), 1 - 1e-9)
    z_a, z_b = norm.ppf(1 - alpha / 2), norm.ppf(power)
    bar = (p + q) / 2
    n = (z_a * math.sqrt(2 * bar * (1 - bar)) + z_b * math.sqrt(p * (1 - p) + q * (1 - q))) ** 2 / (
        q - p
    ) ** 2
    return math.ceil(n)


def read_out(
    counts: pl.DataFrame,
    control: str | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    mde: float = 0.05,
) -> pl.DataFrame:
    """Per experiment and variant: CTR, its interval, lift against the control, p-value, verdict, sample size.

    Args:
        counts: ``experiment``, ``variant``, ``trials`` (responses with feedback), ``successes`` (with a
            positive reaction), optionally ``requests``.
        control: the control variant's name (default: one named control / baseline / a, else the first by
            name).
        mde: relative lift the experiment should be able to detect.

    Raises:
        ValueError: a named control is missing from an experiment.
    """
    rows = []
    for (experiment,), group in counts.sort("variant").group_by(["experiment"], maintain_order=True):
        names = group["variant"].to_list()
        ctrl = control or next((n for n in names if str(n).lower() in CONTROL_NAMES), names[0])
        if ctrl not in names:
            raise ValueError(f"experiment {experiment!r} has no variant {ctrl!r} (variants: {names})")
        base = group.filter(pl.col("variant") == ctrl).row(0, named=True)
        b_s, b_n = int(base["successes"]), int(base["trials"])
        b_rate = b_s / b_n if b_n else float("nan")
        needed = sample_size(b_rate, mde, alpha, power) if b_n else 0
        for r in group.iter_rows(named=True):
            s, n = int(r["successes"]), int(r["trials"])
            rate = s / n if n else float("nan")
            low, high = wilson_interval(s, n, alpha)
            is_control = r["variant"] == ctrl
            p = 1.0 if is_control else two_proportion_p_value(b_s, b_n, s, n)
            if is_control:
                verdict = "control"
            elif p < alpha:
                verdict = "significant gain" if rate > b_rate else "harmful"
            else:
                verdict = "not yet"
            rows.append(
                {
                    "experiment": experiment,
                    "variant": r["variant"],
                    "requests": int(r.get("requests") or n),
                    "trials": n,
                    "successes": s,
                    "ctr": rate,
                    "ctr_low": low,
                    "ctr_high": high,
                    "lift": (rate / b_rate - 1) if b_rate and not is_control else 0.0,
                    "p_value": p,
                    "verdict": verdict,
                    "needed": needed,
                    "remaining": 0 if verdict != "not yet" else max(0, needed - min(n, b_n)),
                }
            )
    schema = {
        "experiment": pl.String,
        "variant": pl.String,
        "requests": pl.Int64,
        "trials": pl.Int64,
        "successes": pl.Int64,
        "ctr": pl.Float64,
        "ctr_low": pl.Float64,
        "ctr_high": pl.Float64,
        "lift": pl.Float64,
        "p_value": pl.Float64,
        "verdict": pl.String,
        "needed": pl.Int64,
        "remaining": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema)
