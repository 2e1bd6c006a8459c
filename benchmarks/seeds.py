"""Figures over seeds for the learning benchmarks: mean ± sd, and a mean's 95% confidence interval."""

from __future__ import annotations

import math
import statistics

# Student's t, two-sided 95%, by degrees of freedom (n − 1 seeds).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def confidence_interval(values: list[float]) -> str:
    """Mean and 95% confidence interval (Student's t, n − 1 degrees of freedom) of the values."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return f"{mean:+.3f} (one seed: no interval)"
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:+.3f}, 95% CI [{mean - half:+.3f}, {mean + half:+.3f}] over {len(values)} seeds"


def binomial_sd(p: float, n: int) -> float:
    """Sampling sd of an accuracy p measured on n independent items."""
    return math.sqrt(p * (1 - p) / n) if n else float("nan")
