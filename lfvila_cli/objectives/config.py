"""What the objectives are configured with (``ObjectiveConfig``: loss weights, temperature, MTC
sampling, MLM rate, seed; docs/method.md §4) and the label conventions. Torch-free: it is part
of every model and stage config.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import check

IGNORE_INDEX = -100  # MLM labels of unselected tokens (Hugging Face convention)
NO_TARGET = -1  # MTC rows whose key is equally near to two values (ignored)


@dataclass
class ObjectiveConfig:
    vpc_weight: float = 1.0
    mtc_weight: float = 0.25
    mlm_weight: float = 1.0
    vtm_weight: float = 10.0
    temperature: float = 0.05  # fixed, not learned (docs/method.md §4); used by VPC and MTC
    mtc_num_key: int = 2
    mtc_num_value: int = 2
    mtc_num_other_neg: int = 3
    mlm_probability: float = 0.15
    # Share of VTM's mismatched pairs that keep their own video and get their sentences in another
    # order (temporal negatives, docs/method.md §4); 0 = the paper's: every one gets another video.
    vtm_order_negatives: float = 0.0
    seed: int = 0  # base seed of the MTC / MLM / VTM generators (same on every rank)

    def __post_init__(self) -> None:
        for name in ("vpc_weight", "mtc_weight", "mlm_weight", "vtm_weight"):
            value = getattr(self, name)
            check(value >= 0.0, name, f"must be >= 0, got {value}")
        check(self.temperature > 0.0, "temperature", f"must be > 0, got {self.temperature}")
        check(self.mtc_num_key >= 1, "mtc_num_key", f"must be >= 1, got {self.mtc_num_key}")
        check(self.mtc_num_value >= 1, "mtc_num_value", f"must be >= 1, got {self.mtc_num_value}")
        check(self.mtc_num_other_neg >= 0, "mtc_num_other_neg", f"must be >= 0, got {self.mtc_num_other_neg}")
        check(
            0.0 < self.mlm_probability <= 1.0,
            "mlm_probability",
            f"must be in (0, 1], got {self.mlm_probability}",
        )
        check(
            0.0 <= self.vtm_order_negatives <= 1.0,
            "vtm_order_negatives",
            f"must be in [0, 1], got {self.vtm_order_negatives}",
        )
        check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
