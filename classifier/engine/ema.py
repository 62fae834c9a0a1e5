"""An exponential moving average of the weights (``--ema DECAY``), as timm's ``--model-ema`` and Ultralytics
(on by default there) keep one.

After every optimiser step: ``avg = d * avg + (1 - d) * weights`` over every floating-point tensor of the
state dict (BatchNorm running statistics included; integer counters are copied), with a warm-up
``d = min(decay, (1 + step) / (10 + step))`` so the first steps do not tie the average to the random
initialisation (TensorFlow's rule; timm's warm-up is of the same shape). A decay d takes over from the warm-up
only after step (10d - 1) / (1 - d): 890 for 0.99, 8,990 for 0.999; before that every decay averages alike.
Validation, ``best.pt``, ``last.pt``'s ``model`` and therefore evaluation, prediction and export use the
average; ``last.pt`` also keeps the trained weights (``trained_model``) so a resumed run continues exactly.
"""
from __future__ import annotations

import copy

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The averaging weight after optimiser step ``step`` (1-based)."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = self.decay_at(step)
        mine, theirs = self.model.state_dict(), model.state_dict()
        floats = [k for k, v in mine.items() if v.is_floating_point()]
        torch._foreach_lerp_([mine[k] for k in floats], [theirs[k] for k in floats], 1.0 - d)
        for k, v in mine.items():
            if not v.is_floating_point():
                v.copy_(theirs[k])
