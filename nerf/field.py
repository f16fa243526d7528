"""Implicit volume field: world points -> density, albedo and (optionally) normals.

Follows threestudio's ``ImplicitVolume`` (``threestudio/models/geometry/implicit_volume.py``) as configured by
``configs/stable-zero123.yaml``:

1. world points in the box ``[-radius, radius]^3`` are mapped to ``[0, 1]^3`` (and clamped);
2. a shared :class:`~nerf.encoding.HashGridEncoding` feeds two bias-free ReLU MLPs (threestudio ``VanillaMLP``,
   ``threestudio/models/networks.py``): a density head (1 output) and an albedo head (3 outputs);
3. ``density = softplus(raw + bias)`` with the Magic3D blob ``bias = scale * (1 - |x| / std)`` evaluated on the
   *world* point; ``albedo = sigmoid(features)`` (the material's ``albedo_activation: sigmoid``);
4. normals point outward, along ``-grad(density)``: analytic (the gradient of the pre-activation density, which
   has the same direction since softplus is increasing; see :meth:`ImplicitVolume.forward`) or central finite
   differences of the density.

Examples:
    >>> field = ImplicitVolume(FieldConfig(hash_grid=HashGridConfig(n_levels=2, log2_hashmap_size=10)), seed=0)
    >>> out = field(torch.zeros(4, 3), with_normal=True)
    >>> out.density.shape, out.albedo.shape, out.normal.shape
    (torch.Size([4]), torch.Size([4, 3]), torch.Size([4, 3]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerf.encoding import HashGridConfig, HashGridEncoding

__all__ = ["FieldConfig", "FieldOutput", "ImplicitVolume", "VanillaMLP"]


@dataclass
class FieldConfig:
    """Hyper-parameters of :class:`ImplicitVolume` (threestudio ``configs/stable-zero123.yaml`` defaults)."""

    radius: float = 2.0
    """Half-size of the scene box ``[-radius, radius]^3`` (world units, > 0)."""
    hash_grid: HashGridConfig = field(default_factory=HashGridConfig)
    """Position encoding, see :class:`~nerf.encoding.HashGridConfig`."""
    n_neurons: int = 64
    """Width of the hidden layers of both MLP heads."""
    n_hidden_layers: int = 2
    """Hidden layers per head (>= 1): ``n_hidden_layers`` ReLU layers then a linear output layer."""
    density_bias: Literal["blob_magic3d", "none"] = "blob_magic3d"
    """Pre-activation density bias: Magic3D blob ``scale * (1 - |x| / std)`` or none."""
    density_blob_scale: float = 10.0
    """Blob height at the origin (pre-activation density units)."""
    density_blob_std: float = 0.5
    """Radius (world units) where the blob bias crosses zero."""
    normal_type: Literal["analytic", "finite_difference"] = "analytic"
    """How normals are computed when asked for."""
    finite_difference_eps: float = 0.01
    """Half-step of the central differences (world units, > 0)."""


@dataclass
class FieldOutput:
    """What :meth:`ImplicitVolume.forward` returns for N points.

    Attributes:
        density: Tensor with shape (N,), >= 0 (softplus), 1 / world units.
        albedo: Tensor with shape (N, 3), in [0, 1] (sigmoid).
        normal: Tensor with shape (N, 3), unit length, outward (along ``-grad density``; analytic normals take the
            gradient of the pre-activation density, finite differences that of the density); None unless requested.
    """

    density: Tensor
    albedo: Tensor
    normal: Tensor | None = None


class VanillaMLP(nn.Sequential):
    """Bias-free ReLU MLP with no output activation (threestudio ``VanillaMLP``, ``threestudio/models/networks.py``).

    Args:
        n_input: input width.
        n_output: output width.
        n_neurons: hidden width.
        n_hidden_layers: number of hidden ReLU layers (>= 1).
        generator: CPU generator for the weights, drawn like ``nn.Linear``'s default
            (``kaiming_uniform_(a=sqrt(5))``, i.e. ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``).

    Input Tensor with shape (N, n_input) -> Tensor with shape (N, n_output).
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        n_neurons: int,
        n_hidden_layers: int,
        generator: torch.Generator | None = None,
    ) -> None:
        if n_hidden_layers < 1:
            raise ValueError(f"n_hidden_layers must be >= 1, got {n_hidden_layers}")
        widths = [n_input] + [n_neurons] * n_hidden_layers
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out, bias=False), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-1], n_output, bias=False))
        super().__init__(*layers)
        with torch.no_grad():
            for layer in self:
                if isinstance(layer, nn.Linear):
                    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)

    def forward_with_tangents(self, x: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:
        """The output and its directional derivatives (forward-mode differentiation, written out).

        Every linear layer maps the tangents as it maps the input; every ReLU multiplies them by its derivative
        ``1[pre-activation > 0]`` (the derivative autograd uses, 0 at 0). Differentiable w.r.t. the weights, the
        input and the tangents with a plain first-order graph, so losses on the tangents train the network without
        a double backward (and the graph can be recomputed by ``torch.utils.checkpoint``).

        Args:
            x: Tensor with shape (N, n_input).
            tangents: Tensor with shape (N, K, n_input), K directions ``d x / d u_k``.

        Returns:
            output: Tensor with shape (N, n_output), equal to ``self(x)``.
            tangents: Tensor with shape (N, K, n_output), ``d output / d u_k``.
        """
        for layer in self:
            if isinstance(layer, nn.Linear):
                x, tangents = layer(x), layer(tangents)
            elif isinstance(layer, nn.ReLU):
                active = x > 0
                x = torch.relu(x)
                tangents = tangents * active.unsqueeze(1)
            else:  # pragma: no cover - VanillaMLP holds only Linear and ReLU layers
                raise TypeError(f"forward_with_tangents: unsupported layer {layer!r}")
        return x, tangents


class ImplicitVolume(nn.Module):
    """Hash-grid NeRF field (threestudio ``ImplicitVolume``).

    Args:
        config: see :class:`FieldConfig`.
        seed: seeds a private generator; equal seeds give identical parameters, the global RNG is not touched.

    Raises:
        ValueError: on an invalid config.
    """

    def __init__(self, config: FieldConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        config = config if config is not None else FieldConfig()
        if config.radius <= 0 or config.finite_difference_eps <= 0 or config.density_blob_std <= 0:
            raise ValueError(f"FieldConfig: radius, finite_difference_eps and density_blob_std must be > 0: {config}")
        if config.density_bias not in ("blob_magic3d", "none"):
            raise ValueError(f"FieldConfig: unknown density_bias {config.density_bias!r}")
        if config.normal_type not in ("analytic", "finite_difference"):
            raise ValueError(f"FieldConfig: unknown normal_type {config.normal_type!r}")
        self.config = config
        generator = torch.Generator().manual_seed(seed)
        self.encoding = HashGridEncoding(config.hash_grid, generator=generator)
        n_enc = self.encoding.n_output_dims
        self.density_network = VanillaMLP(n_enc, 1, config.n_neurons, config.n_hidden_layers, generator)
        self.feature_network = VanillaMLP(n_enc, 3, config.n_neurons, config.n_hidden_layers, generator)

    @property
    def aabb(self) -> Tensor:
        """Tensor with shape (6,): ``(-r, -r, -r, r, r, r)``."""
        r = self.config.radius
        reference = next(self.parameters())
        return torch.tensor([-r, -r, -r, r, r, r], dtype=reference.dtype, device=reference.device)

    def _normalise(self, points: Tensor) -> Tensor:
        r = self.config.radius
        return ((points + r) / (2.0 * r)).clamp(0.0, 1.0)

    def _density_bias(self, points: Tensor) -> Tensor | float:
        if self.config.density_bias == "blob_magic3d":
            return self.config.density_blob_scale * (1.0 - points.norm(dim=-1) / self.config.density_blob_std)
        return 0.0

    def _raw_density_and_encoding(self, points: Tensor) -> tuple[Tensor, Tensor]:
        enc = self.encoding(self._normalise(points))
        raw = self.density_network(enc)[:, 0] + self._density_bias(points)
        return raw, enc

    def activation(self, raw: Tensor) -> Tensor:
        """Pre-activation density (N,) -> density (N,), increasing: ``softplus`` (subclasses change it)."""
        return F.softplus(raw)

    def density(self, points: Tensor) -> Tensor:
        """Density at world points.

        Args:
            points: Tensor with shape (N, 3), world units (outside the box the encoding is clamped to its border).

        Returns:
            Tensor with shape (N,), >= 0, 1 / world units.

        Raises:
            ValueError: if ``points`` is not (N, 3).
        """
        _check_points(points)
        raw, _ = self._raw_density_and_encoding(points)
        return self.activation(raw)

    def forward(self, points: Tensor, with_normal: bool = False) -> FieldOutput:
        """Density, albedo and optionally normals at world points.

        Analytic normals are ``−∇ raw / |∇ raw|`` of the *pre-activation* density ``raw``. threestudio's
        ``implicit_volume.py`` differentiates the activated density instead (``torch.autograd.grad(density,
        points, create_graph=True)``, after softplus); softplus is increasing, so the direction is the same, and
        the pre-activation gradient stays representable where softplus saturates: multinerf's choice
        (``internal/models.py``, "the gradient of raw (pre-activation) density ... is more numerically stable").

        When ``points`` does not require grad (the usual case) the hash grid supplies its Jacobian in the same
        pass (:meth:`HashGridEncoding.forward_with_jacobian`) and the gradient is carried forward through the
        density MLP along the three axes (:meth:`VanillaMLP.forward_with_tangents`): the same first derivative
        autograd gives (the Jacobian's own dependence on the points, i.e. second derivatives of the encoding, is
        not represented, and the normals are not differentiated w.r.t. the points), built as a plain first-order
        graph of the parameters. Losses on the normals therefore train the field with one backward pass, and the
        whole evaluation can be recomputed under ``torch.utils.checkpoint`` (a ``create_graph`` gradient inside a
        checkpointed function would be recomputed, and kept, during the forward). Under ``torch.no_grad()`` no
        graph is built. When ``points`` requires grad, everything is differentiated by autograd
        (``create_graph=True`` when gradients are enabled), exactly to every order but slower.

        Args:
            points: Tensor with shape (N, 3), world units.
            with_normal: also return normals, Tensor with shape (N, 3).

        Returns:
            :class:`FieldOutput`.

        Raises:
            ValueError: if ``points`` is not (N, 3).
        """
        _check_points(points)
        if not with_normal:
            raw, enc = self._raw_density_and_encoding(points)
            return FieldOutput(self.activation(raw), torch.sigmoid(self.feature_network(enc)))
        if self.config.normal_type == "finite_difference":
            raw, enc = self._raw_density_and_encoding(points)
            return FieldOutput(
                self.activation(raw), torch.sigmoid(self.feature_network(enc)), self._finite_difference_normal(points)
            )
        return self._forward_analytic(points)

    def _forward_analytic(self, points: Tensor) -> FieldOutput:
        if points.requires_grad:
            return self._forward_analytic_autograd(points)
        # d unit / d points: 1 / (2 r) per axis inside the box, 0 where the clamp holds (autograd's clamp rule)
        r = self.config.radius
        shifted = (points + r) / (2.0 * r)
        unit = shifted.clamp(0.0, 1.0)
        d_unit = ((shifted >= 0.0) & (shifted <= 1.0)).to(points.dtype) / (2.0 * r)  # (N, 3)
        enc, jac = self.encoding.forward_with_jacobian(unit)  # (N, D), (N, D, 3)
        # (N, 3, D): d enc / d points_k, contiguous (a transposed view would send F.linear down a slow batched path)
        tangents = (jac * d_unit.unsqueeze(1)).transpose(1, 2).contiguous()
        raw, d_raw = self.density_network.forward_with_tangents(enc, tangents)  # (N, 1), (N, 3, 1)
        raw = raw[:, 0] + self._density_bias(points)
        grad = d_raw[..., 0] + self._density_bias_gradient(points)
        return FieldOutput(self.activation(raw), torch.sigmoid(self.feature_network(enc)), F.normalize(-grad, dim=-1))

    def _forward_analytic_autograd(self, points: Tensor) -> FieldOutput:
        """Analytic normals by autograd w.r.t. ``points`` (which require grad): exact to every order."""
        training_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            raw, enc = self._raw_density_and_encoding(points)
            (grad,) = torch.autograd.grad(raw, points, torch.ones_like(raw), create_graph=training_graph)
            density = self.activation(raw)
            albedo = torch.sigmoid(self.feature_network(enc))
        normal = F.normalize(-grad, dim=-1)
        if not training_graph:
            density, albedo, normal = density.detach(), albedo.detach(), normal.detach()
        return FieldOutput(density, albedo, normal)

    def _density_bias_gradient(self, points: Tensor) -> Tensor | float:
        """``d bias / d points``, Tensor with shape (N, 3) (0 at the origin, as autograd's norm rule)."""
        if self.config.density_bias != "blob_magic3d":
            return 0.0
        norm = points.norm(dim=-1, keepdim=True)
        scale = self.config.density_blob_scale / self.config.density_blob_std
        return torch.where(norm > 0, -scale * points / norm.clamp_min(torch.finfo(points.dtype).tiny), 0.0)

    def _finite_difference_normal(self, points: Tensor) -> Tensor:
        eps = self.config.finite_difference_eps
        r = self.config.radius
        offsets = torch.eye(3, dtype=points.dtype, device=points.device).repeat_interleave(2, dim=0)
        offsets[1::2] *= -1.0  # +x, -x, +y, -y, +z, -z
        shifted = (points[:, None, :] + eps * offsets).clamp(-r, r).reshape(-1, 3)
        density = self.density(shifted).view(-1, 3, 2)
        return F.normalize(-0.5 * (density[..., 0] - density[..., 1]) / eps, dim=-1)


def _check_points(points: Tensor) -> None:
    if points.dim() != 2 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {tuple(points.shape)}")
