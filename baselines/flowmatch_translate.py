"""flowmatch itself as a comparison method: :func:`flowmatch.translate` behind ``Method``.

``flowmatch`` uses no paired rows; ``flowmatch_pairs`` adds the ``n_pairs`` paired rows as
weighted anchors (they are appended to both sides' unpaired rows).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flowmatch.methods import FitData, Method, register

__all__ = ["FlowMatch", "FlowMatchPairs"]


@register("flowmatch")
class FlowMatch(Method):
    """Zero-pair translation: flow autoencoders, density trees, tree matching, OT refinement."""

    paired = False
    uses = "unpaired activations (density trees, no pairs)"

    def __init__(self, **translate_params: Any) -> None:
        self.translate_params = translate_params

    def _fit(self, data: FitData) -> None:
        from flowmatch.translation import translate

        a, b, pairs = data.a, data.b, None
        if self.paired and data.pairs_a is not None and data.pairs_b is not None:
            n_p = len(data.pairs_a)
            a, b = torch.cat([a, data.pairs_a]), torch.cat([b, data.pairs_b])
            pairs = (torch.arange(n_p) + len(data.a), torch.arange(n_p) + len(data.b))
        params = {"seed": data.seed, "progress": False, **self.translate_params}
        self.translation_ = translate(a, b, pairs, **params)

    def _transform(self, x_a: Tensor) -> Tensor:
        return self.translation_(x_a)


@register("flowmatch_pairs")
class FlowMatchPairs(FlowMatch):
    """flowmatch with the paired rows as extra anchors in the alignment."""

    paired = True
    uses = "unpaired activations + paired rows as anchors"
