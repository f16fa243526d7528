"""Multiresolution hash encoding (Instant-NGP, Müller et al. 2022) in plain PyTorch.

Level ``l`` of the encoding is a cubic lattice over ``[0, 1]^3`` with ``res_l = floor(base * scale**l)`` cells
per axis, so ``res_l + 1`` vertices per axis. Every vertex owns a feature vector of ``n_features_per_level``
floats stored in a table of ``T = 2**log2_hashmap_size`` rows per level. Coarse levels whose ``(res_l + 1)**3``
vertices fit into the table index it densely (``ix + iy * (res_l + 1) + iz * (res_l + 1)**2``); finer levels use
the spatial hash of the paper, ``(ix * 1) XOR (iy * 2654435761) XOR (iz * 805459861) mod T``. A point's feature at
a level is the trilinear interpolation of its cell's 8 vertex features; the output concatenates the levels.

Implementation notes:

- Everything is vectorised across points *and* levels: per block of points, one gather from the flattened table
  of shape ``(n_levels * T, F)`` and one ``index_add_`` into a dense table gradient in the backward pass.
- Tensors are laid out ``(n_levels, 8 corners, N)``: broadcasting runs over the long contiguous point dimension
  (much faster on CPU than an inner ``(…, 2, 2, 2)`` block), and the gather / scatter visit one level's slice of
  the table at a time, which is cache friendly.
- Points are processed in blocks of ``block_size`` so that temporaries stay small enough to be recycled by the
  allocator instead of being page-faulted in afresh on every call.
- Index arithmetic is int64. Because ``T`` is a power of two, ``mod T`` is a bit mask and gives exactly the
  same rows as tiny-cuda-nn's uint32 arithmetic.
- When the input does not require a gradient (training the table, rendering, and analytic normals through
  :meth:`HashGridEncoding.forward_with_jacobian`) a custom autograd function saves only the indices,
  interpolation weights (and their derivatives), with ``save_for_backward`` so that ``torch.utils.checkpoint``
  can drop and recompute them. When it does (exact derivatives w.r.t. the points to every order), a plain
  differentiable formulation is used; both give the same values.

Examples:
    >>> enc = HashGridEncoding(HashGridConfig(n_levels=4, log2_hashmap_size=12))
    >>> enc(torch.rand(10, 3)).shape
    torch.Size([10, 8])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["HASH_PRIMES", "HashGridConfig", "HashGridEncoding", "level_resolutions"]

_BLOCK_BYTES = 16 * 2**20

HASH_PRIMES: tuple[int, int, int] = (1, 2654435761, 805459861)
"""Per-axis primes of the spatial hash (Müller et al. 2022, eq. 4;
tiny-cuda-nn ``include/tiny-cuda-nn/encodings/grid.h``)."""


@dataclass
class HashGridConfig:
    """Hyper-parameters of :class:`HashGridEncoding`.

    Defaults are threestudio's ``configs/stable-zero123.yaml`` (``pos_encoding_config``).
    """

    n_levels: int = 16
    """Number of resolution levels L (>= 1)."""
    n_features_per_level: int = 2
    """Feature channels F stored per lattice vertex (>= 1)."""
    log2_hashmap_size: int = 19
    """Table rows per level are ``2**log2_hashmap_size`` (1..30)."""
    base_resolution: int = 16
    """Cells per axis of the coarsest level (>= 1)."""
    per_level_scale: float = 1.447269237440378
    """Growth factor b of the resolution between levels (>= 1); the default gives ``floor(16 * b**15) = 4095``,
    i.e. a finest resolution of about 4096 (threestudio ``configs/stable-zero123.yaml``)."""


def level_resolutions(config: HashGridConfig) -> list[int]:
    """Cells per axis of every level, ``floor(base_resolution * per_level_scale**l)`` for l = 0..L-1."""
    return [int(math.floor(config.base_resolution * config.per_level_scale**lvl)) for lvl in range(config.n_levels)]


def _check_config(config: HashGridConfig) -> None:
    if config.n_levels < 1 or config.n_features_per_level < 1 or config.base_resolution < 1:
        raise ValueError(
            f"HashGridConfig: n_levels, n_features_per_level and base_resolution must be >= 1, got {config}"
        )
    if not 1 <= config.log2_hashmap_size <= 30:
        raise ValueError(f"HashGridConfig: log2_hashmap_size must be in [1, 30], got {config.log2_hashmap_size}")
    if config.per_level_scale < 1.0:
        raise ValueError(f"HashGridConfig: per_level_scale must be >= 1, got {config.per_level_scale}")


def _corner_indices_and_weights(
    x: Tensor,
    resolution: Tensor,
    multipliers: Tensor,
    level_offsets: Tensor,
    n_dense: int,
    table_size: int,
    with_derivatives: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Table rows and trilinear weights of the 8 cell corners of every point at every level.

    Args:
        x: Tensor with shape (N, 3), in [0, 1] (already clamped). Float32 or float64.
        resolution: Tensor with shape (L, 1), cells per axis, same dtype as ``x``.
        multipliers: Tensor with shape (3, L, 1), int64: dense strides for the first ``n_dense`` levels, hash
            primes for the others.
        level_offsets: Tensor with shape (L, 1), int64, ``l * table_size``.
        n_dense: number of leading levels indexed densely.
        table_size: rows per level (a power of two).
        with_derivatives: also return the derivatives of the weights w.r.t. ``x``.

    Returns:
        indices: Tensor with shape (L, 8, N), int64 rows of the flattened ``(L * T, F)`` table. Corner
            ``c = 4 * i + 2 * j + k`` is the vertex ``floor(pos) + (i, j, k)``.
        weights: Tensor with shape (L, 8, N), same dtype as ``x``; differentiable w.r.t. ``x``.
        dweights: Tensor with shape (3, L, 8, N), ``d weights / d x[:, axis]`` (piecewise constant in each cell,
            one-sided on cell faces), or None.
    """
    n_levels = resolution.shape[0]
    n_points = x.shape[0]
    pos = x.t().unsqueeze(1) * resolution  # (3, L, N)
    with torch.no_grad():
        # Clamp so that x == 1 falls in the last cell (weight 1 on its far corner) instead of past the lattice.
        cell = torch.minimum(pos.floor(), resolution - 1.0)
    frac = pos - cell
    low = cell.long().mul_(multipliers)  # (3, L, N): per-axis term of the lower corner
    axis_terms = torch.stack([low, low + multipliers], dim=2)  # (3, L, 2, N)
    hashed = axis_terms[:, n_dense:]
    hashed.bitwise_and_(table_size - 1)  # (a ^ b ^ c) & m == (a & m) ^ (b & m) ^ (c & m)
    # The level offset has no bits below log2(T): adding it to the x term is the same as adding it after the XOR.
    axis_terms[0] += level_offsets.unsqueeze(-1)
    indices = torch.empty(n_levels, 2, 2, 2, n_points, dtype=torch.int64, device=x.device)
    if n_dense > 0:
        dense = axis_terms[:, :n_dense]
        xy = dense[0].unsqueeze(2) + dense[1].unsqueeze(1)  # (Ld, 2, 2, N)
        torch.add(xy.unsqueeze(3), dense[2][:, None, None], out=indices[:n_dense])
    if n_dense < n_levels:
        xy = hashed[0].unsqueeze(2) ^ hashed[1].unsqueeze(1)
        torch.bitwise_xor(xy.unsqueeze(3), hashed[2][:, None, None], out=indices[n_dense:])
    w1 = torch.stack([1.0 - frac, frac], dim=2)  # (3, L, 2, N)
    wxy = w1[0].unsqueeze(2) * w1[1].unsqueeze(1)  # (L, 2, 2, N)
    weights = wxy.unsqueeze(3) * w1[2][:, None, None]  # (L, 2, 2, 2, N)
    dweights = None
    if with_derivatives:
        # d(1 - f)/dx = -res, d f/dx = +res for the axis being differentiated; the other two factors stay.
        slope = torch.cat([-resolution, resolution], dim=1)  # (L, 2)
        wyz = w1[1].unsqueeze(2) * w1[2].unsqueeze(1)  # (L, 2, 2, N)
        wxz = w1[0].unsqueeze(2) * w1[2].unsqueeze(1)
        dweights = torch.stack(
            [
                slope[:, :, None, None, None] * wyz.unsqueeze(1),
                wxz.unsqueeze(2) * slope[:, None, :, None, None],
                wxy.unsqueeze(3) * slope[:, None, None, :, None],
            ]
        ).reshape(3, n_levels, 8, n_points)
    return indices.view(n_levels, 8, n_points), weights.reshape(n_levels, 8, n_points), dweights


def _gather_rows(table: Tensor, rows: Tensor) -> Tensor:
    """``table[rows]`` for a contiguous (M, F) table and int64 rows (K,) -> (K, F), not differentiable.

    A row of 4, 8 or 16 bytes is reinterpreted as one scalar so the gather runs on a 1-D tensor (several times
    faster on CPU than a 2-D ``index_select``); the bytes are copied unchanged.
    """
    row_bytes = table.shape[-1] * table.element_size()
    view_dtype = {4: torch.int32, 8: torch.int64, 16: torch.complex128}.get(row_bytes)
    if view_dtype is None or table.shape[-1] == 1:
        return table.index_select(0, rows)
    return table.view(view_dtype).view(-1).index_select(0, rows).view(table.dtype).view(-1, table.shape[-1])


def _scatter_add_rows(target: Tensor, rows: Tensor, src: Tensor) -> None:
    """``target[rows] += src`` with repeated rows summed; target (M, F) and src (K, F) contiguous, in place.

    Pairs of floats are added as one complex number (component-wise, so the sums are the same).
    """
    n_features = target.shape[-1]
    pair_dtype = {torch.float32: torch.complex64, torch.float64: torch.complex128}.get(target.dtype)
    if n_features == 1:
        target.view(-1).index_add_(0, rows, src.reshape(-1))
    elif n_features == 2 and pair_dtype is not None:
        target.view(pair_dtype).view(-1).index_add_(0, rows, src.contiguous().view(pair_dtype).view(-1))
    else:
        target.index_add_(0, rows, src)


def _interpolate(gathered: Tensor, weights: Tensor) -> Tensor:
    """``sum_c weights[:, c] * gathered[:, c]``: (L, 8, N, F) x (L, 8, N) -> (N, L * F)."""
    out = (gathered * weights.unsqueeze(-1)).sum(1)  # (L, N, F)
    return out.transpose(0, 1).reshape(out.shape[1], -1)


class _HashGridLookup(torch.autograd.Function):
    """Gather + interpolate in blocks of points, with a cheap backward to the table only.

    Optionally also returns the Jacobian ``d out / d x`` (the same gathered features interpolated with the
    weight derivatives). ``x`` is treated as a constant: indices, weights and weight derivatives of every block are
    saved (``save_for_backward``) for the backward pass, which scatters ``weights * grad_out + dweights .
    grad_jacobian`` into one dense table gradient with ``index_add_``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, table: Tensor, x: Tensor, encoding: "HashGridEncoding", with_jacobian: bool, keep: bool
    ) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        n_features = table.shape[-1]
        n_points, n_out = x.shape[0], encoding.n_output_dims
        out = torch.empty(n_points, n_out, dtype=table.dtype, device=table.device)
        jac = torch.empty(n_points if with_jacobian else 0, n_out, 3, dtype=table.dtype, device=table.device)
        blocks: list[tuple[int, int]] = []
        saved: list[Tensor | None] = []
        for start in range(0, n_points, encoding.block_size):
            stop = min(start + encoding.block_size, n_points)
            indices, weights, dweights = encoding.corner_indices_and_weights(x[start:stop], with_jacobian)
            gathered = _gather_rows(table, indices.reshape(-1)).view(*indices.shape, n_features)
            out[start:stop] = _interpolate(gathered, weights)
            if dweights is not None:
                d_lnf = (gathered.unsqueeze(0) * dweights.unsqueeze(-1)).sum(2)  # (3, L, n, F)
                jac[start:stop] = d_lnf.permute(2, 1, 3, 0).reshape(stop - start, n_out, 3)
            if keep:  # only when a backward pass can follow (keeps no-grad evaluation lean)
                blocks.append((start, stop))
                saved += [indices, weights, dweights]
        if not with_jacobian:
            ctx.mark_non_differentiable(jac)
        # Saved through save_for_backward (not as ctx attributes) so that saved-tensor hooks see them: under
        # torch.utils.checkpoint they are dropped after the forward and recomputed in the backward.
        ctx.save_for_backward(*saved)
        ctx.blocks = blocks
        ctx.table_shape = table.shape
        return out, jac

    @staticmethod
    def backward(ctx, grad_out: Tensor | None, grad_jac: Tensor | None):  # type: ignore[override]
        if grad_out is None and grad_jac is None:
            return None, None, None, None, None
        n_features = ctx.table_shape[-1]
        like = grad_out if grad_out is not None else grad_jac
        grad_table = torch.zeros(ctx.table_shape, dtype=like.dtype, device=like.device)
        saved = ctx.saved_tensors
        for block, (start, stop) in enumerate(ctx.blocks):
            indices, weights, dweights = saved[3 * block : 3 * block + 3]
            n_levels, n_points = indices.shape[0], indices.shape[2]
            src = None  # (L, 8, n, F): what each gathered row receives
            if grad_out is not None:
                g = grad_out[start:stop].reshape(n_points, n_levels, n_features).transpose(0, 1)  # (L, n, F)
                src = weights.unsqueeze(-1) * g.unsqueeze(1)
            if grad_jac is not None and dweights is not None:
                gj = grad_jac[start:stop].reshape(n_points, n_levels, n_features, 3).permute(3, 1, 0, 2)  # (3, L, n, F)
                for axis in range(3):
                    if src is None:
                        src = dweights[axis].unsqueeze(-1) * gj[axis].unsqueeze(1)
                    else:
                        src.addcmul_(dweights[axis].unsqueeze(-1), gj[axis].unsqueeze(1))
            if src is None:
                continue
            _scatter_add_rows(grad_table, indices.reshape(-1), src.reshape(-1, n_features))
        return grad_table, None, None, None, None


class HashGridEncoding(nn.Module):
    """Instant-NGP multiresolution hash encoding of points in the unit cube.

    Args:
        config: see :class:`HashGridConfig`.
        generator: optional CPU generator for the table initialisation, uniform in ``[-1e-4, 1e-4]``
            (tiny-cuda-nn ``include/tiny-cuda-nn/encodings/grid.h``, ``initialize_params``).

    Attributes:
        table: Parameter with shape (n_levels, 2**log2_hashmap_size, n_features_per_level), float32. Dense levels
            use only their first ``(res + 1)**3`` rows.
        n_output_dims: ``n_levels * n_features_per_level``.
        n_dense_levels: how many leading levels are indexed densely.

    Raises:
        ValueError: on an invalid config.

    Examples:
        >>> enc = HashGridEncoding(HashGridConfig(n_levels=2, log2_hashmap_size=10), torch.Generator().manual_seed(0))
        >>> enc(torch.full((1, 3), 0.5)).shape
        torch.Size([1, 4])
    """

    def __init__(self, config: HashGridConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        _check_config(config)
        self.config = config
        self.table_size = 2**config.log2_hashmap_size
        self.n_output_dims = config.n_levels * config.n_features_per_level
        self.resolutions = level_resolutions(config)
        # Points per block of the fast path: keeps each int64 index tensor (8 * L * block * 8 bytes) at ~16 MiB,
        # below glibc's mmap threshold, so blocks reuse heap memory instead of page-faulting fresh mappings.
        self.block_size = max(1024, _BLOCK_BYTES // (8 * config.n_levels * 8))
        dense = [(res + 1) ** 3 <= self.table_size for res in self.resolutions]
        # resolutions grow with the level, so the dense levels are a prefix
        self.n_dense_levels = sum(dense)
        multipliers = torch.empty(3, config.n_levels, 1, dtype=torch.int64)
        for lvl, res in enumerate(self.resolutions):
            strides = (1, res + 1, (res + 1) ** 2) if dense[lvl] else HASH_PRIMES
            multipliers[:, lvl, 0] = torch.tensor(strides, dtype=torch.int64)
        self.register_buffer("_multipliers", multipliers, persistent=False)
        self.register_buffer(
            "_resolution", torch.tensor(self.resolutions, dtype=torch.float32).view(-1, 1), persistent=False
        )
        self.register_buffer(
            "_level_offsets", (torch.arange(config.n_levels, dtype=torch.int64) * self.table_size).view(-1, 1),
            persistent=False,
        )
        table = torch.empty(config.n_levels, self.table_size, config.n_features_per_level)
        table.uniform_(-1e-4, 1e-4, generator=generator)
        self.table = nn.Parameter(table)

    def corner_indices_and_weights(
        self, x: Tensor, with_derivatives: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Rows of the flattened table and trilinear weights of the 8 cell corners at every level.

        Args:
            x: Tensor with shape (N, 3); values outside [0, 1] are clamped.
            with_derivatives: also return the weights' derivatives w.r.t. ``x``.

        Returns:
            indices: Tensor with shape (L, 8, N), int64 rows of ``table.view(-1, F)``; corner ``4i + 2j + k`` is
                the vertex ``cell + (i, j, k)``.
            weights: Tensor with shape (L, 8, N), summing to 1 over the corners.
            dweights: Tensor with shape (3, L, 8, N) or None.
        """
        x = x.clamp(0.0, 1.0)
        return _corner_indices_and_weights(
            x, self._resolution.to(x.dtype), self._multipliers, self._level_offsets, self.n_dense_levels,
            self.table_size, with_derivatives,
        )

    def forward(self, x: Tensor) -> Tensor:
        """Encode points.

        Args:
            x: Tensor with shape (N, 3), positions in the unit cube [0, 1]^3 (clamped into it). Any float dtype;
                computation happens in the table's dtype (float32 unless the module was converted).

        Returns:
            Tensor with shape (N, n_levels * n_features_per_level), level-major (level 0 features first).
            Differentiable w.r.t. the table always, and w.r.t. ``x`` (to any order) when ``x.requires_grad``.

        Raises:
            ValueError: if ``x`` is not of shape (N, 3).
        """
        _check_points(x)
        x = x.to(self.table.dtype)
        table = self.table.view(-1, self.config.n_features_per_level)
        if x.requires_grad:
            indices, weights, _ = self.corner_indices_and_weights(x)
            gathered = table.index_select(0, indices.reshape(-1)).view(*indices.shape, table.shape[-1])
            return _interpolate(gathered, weights)
        out, _ = _HashGridLookup.apply(table, x, self, False, self._keep_for_backward())
        return out

    def forward_with_jacobian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encode points and return the Jacobian of the encoding w.r.t. the points, in one pass.

        This is how analytic normals are computed cheaply. The Jacobian is the exact derivative of the trilinear
        interpolation in the cell that holds the point (the cell above, on a face; as in :meth:`forward`).
        ``x`` is treated as a constant (no gradient flows to it).

        Args:
            x: Tensor with shape (N, 3), in [0, 1] (clamped into it).

        Returns:
            encoding: Tensor with shape (N, D), as :meth:`forward`.
            jacobian: Tensor with shape (N, D, 3), ``d encoding / d x``.
            Both are differentiable w.r.t. the table.

        Raises:
            ValueError: if ``x`` is not of shape (N, 3).
        """
        _check_points(x)
        table = self.table.view(-1, self.config.n_features_per_level)
        return _HashGridLookup.apply(
            table, x.detach().to(self.table.dtype), self, True, self._keep_for_backward()
        )

    def _keep_for_backward(self) -> bool:
        return torch.is_grad_enabled() and self.table.requires_grad


def _check_points(x: Tensor) -> None:
    if x.dim() != 2 or x.shape[-1] != 3:
        raise ValueError(f"HashGridEncoding expects points of shape (N, 3), got {tuple(x.shape)}")
