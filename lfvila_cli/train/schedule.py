"""Learning-rate schedule and AdamW parameter groups (docs/method.md §5).

The schedule is a pure function of the optimizer step, so a resumed run needs no scheduler state:
linear warm-up from 0 to the peak over ``warmup_steps``, then linear decay to
``final_lr_ratio * peak`` at ``total_steps``.
"""

from __future__ import annotations

import re
from typing import Iterable

import torch.nn as nn

# Parameters that take no weight decay (docs/method.md §5): biases, normalisation weights (LayerNorm,
# norm1, clip_norm, BERT's ``LayerNorm``) and position / relative-position tables.
_NO_DECAY_PATTERNS = (
    re.compile(r"(^|\.)bias$"),
    re.compile(r"(^|\.)[^.]*norm[^.]*\.weight$", re.IGNORECASE),
    re.compile(r"position_embedding|pos_embed|relative_position_bias_table|position_bias"),
)


def lr_factor(step: int, warmup_steps: int, total_steps: int, final_lr_ratio: float) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-based).

    step < warmup: (step + 1) / warmup, so the first step already learns; after warm-up the
    factor falls linearly from 1 at ``warmup_steps`` to ``final_lr_ratio`` at ``total_steps``
    (and stays there if training runs past it).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return 1.0 - (1.0 - final_lr_ratio) * progress


def takes_weight_decay(name: str) -> bool:
    """Whether the parameter called ``name`` (as in ``named_parameters``) is decayed."""
    return not any(pattern.search(name) for pattern in _NO_DECAY_PATTERNS)


def parameter_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: decayed and not decayed.

    Frozen parameters (``requires_grad=False``) are left out, so the optimizer and ZeRO's
    partitions only hold what the stage trains. Each group keeps its ``names`` for inspection.
    """
    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    for name, param in named_parameters:
        if param.requires_grad:
            (decay if takes_weight_decay(name) else no_decay)[name] = param
    groups = [
        {"params": list(decay.values()), "weight_decay": weight_decay, "names": list(decay)},
        {"params": list(no_decay.values()), "weight_decay": 0.0, "names": list(no_decay)},
    ]
    return [g for g in groups if g["params"]]
