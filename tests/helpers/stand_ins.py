"""Hand-built stand-ins for a generator: the latent side of the generator protocol, for tests whose
"images" are laid out by hand so that known StyleSpace channels drive known pixels."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


class StandInGenerator(nn.Module):
    """z -> w by the matrix `self.map`, W+ by repeating w, StyleSpace codes by one matrix per layer
    (`self.affines[i]` for the i-th entry of LAYERS: a layer name, or (name, channels)). Subclasses set
    LAYERS, `map`, `affines`, `identity` and `n_latent` and render in `synthesis_from_styles`."""

    LAYERS: tuple = ()
    w_dim = z_dim = 8
    is_3d = False

    def layer_names(self) -> list[str]:
        return [layer if isinstance(layer, str) else layer[0] for layer in self.LAYERS]

    @property
    def device(self):
        return self.map.device

    def mapping(self, z, truncation=1.0):
        return z @ self.map

    def to_wplus(self, w):
        return w if w.dim() == 3 else w[:, None].expand(-1, self.n_latent, -1)

    def styles(self, wp):
        return OrderedDict((name, wp[:, i] @ self.affines[i]) for i, name in enumerate(self.layer_names()))
