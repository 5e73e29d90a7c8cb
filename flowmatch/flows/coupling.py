"""Volume-preserving coupling flow: a NICE stack of nflows additive coupling layers.

Each layer permutes the coordinates (a fixed random permutation drawn from the flow's
generator), then shifts one half by a network of the other half,
``z_B = x_B + m(x_A)``, which has unit Jacobian determinant. A last permutation undoes the
product of all earlier ones, and the shift networks' output layers start at zero, so the
freshly built flow is exactly the identity.

References
----------
Dinh, Krueger, Bengio (2015). NICE: Non-linear independent components estimation. ICLR workshop.
Durkan, Bekasov, Murray, Papamakarios (2020). nflows: normalizing flows in PyTorch (software).
"""

from __future__ import annotations

import torch
from nflows.transforms import AdditiveCouplingTransform, CompositeTransform, Permutation
from torch import Tensor, nn

__all__ = ["AdditiveCouplingFlow", "ShiftNet"]


class ShiftNet(nn.Module):
    """MLP ``(n, d_in) → (n, d_out)`` with tanh hidden layers and a zero-initialised output."""

    def __init__(self, d_in: int, d_out: int, hidden: int, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = d_in
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        last = nn.Linear(width, d_out)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Shift for the transformed half  # (n, d_out); ``context`` is unused."""
        return self.net(x)


class AdditiveCouplingFlow(nn.Module):
    """NICE flow on ``R^dim``: ``n_layers`` (permutation, additive coupling) pairs.

    Parameters
    ----------
    dim : number of coordinates the flow acts on (>= 2).
    hidden : hidden units of each shift network.
    n_layers : number of coupling layers.
    depth : hidden layers per shift network.
    generator : seeds the permutations and the initial weights.

    Attributes
    ----------
    volume_preserving : bool  # True: ``forward`` returns a zero log-determinant.
    transform : nflows ``CompositeTransform`` holding the layers.
    """

    volume_preserving = True

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        n_layers: int = 6,
        depth: int = 2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"a coupling flow needs dim >= 2, got {dim}")
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.dim = dim
        rng_state = torch.random.get_rng_state()
        if generator is not None:  # nn.Linear draws from the global generator
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        try:
            layers: list[nn.Module] = []
            total = torch.arange(dim)
            mask = (torch.arange(dim) % 2).to(torch.int64)
            for _ in range(n_layers):
                perm = torch.randperm(dim, generator=generator)
                total = total[perm]
                layers.append(Permutation(perm))
                layers.append(
                    AdditiveCouplingTransform(mask, lambda i, o: ShiftNet(i, o, hidden, depth))
                )
            layers.append(Permutation(torch.argsort(total)))
        finally:
            if generator is not None:
                torch.random.set_rng_state(rng_state)
        self.transform = CompositeTransform(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``z = φ(x)`` and ``log|det ∂φ/∂x|`` (exactly zero)  # (n, dim), (n,)"""
        return self.transform(x)[0], x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        """``x = φ⁻¹(z)``  # (n, dim)"""
        return self.transform.inverse(z)[0]
