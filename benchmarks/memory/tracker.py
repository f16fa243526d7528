"""A counter of live tensor storages, for real tensors and for ``FakeTensorMode`` alike.

:class:`LiveStorageTracker` is a ``TorchDispatchMode``: every tensor an operator returns is looked up by its untyped
storage; a storage seen for the first time is added to the running total (rounded up to ``granularity`` bytes, 512
for CUDA's caching allocator) and a weakref finaliser takes it off again when the storage dies. The largest total
is the peak. Storages that existed before (weights) are added with :meth:`LiveStorageTracker.register`. Because
only storages are counted, views, in-place results and tensors saved twice count once, as the allocator sees them.

Each live storage has one category, and the peak comes with the split between them:

- ``weights``: registered before the run (module parameters and buffers, inputs);
- ``activations``: tensors autograd saved for backward (a ``saved_tensors_hooks`` pack hook marks them; tensors a
  custom ``autograd.Function`` keeps as plain ``ctx`` attributes stay ``temporaries``);
- ``gradients``: ``.grad`` of registered parameters (a post-accumulate-grad hook marks them);
- ``optimizer``: storages created inside ``Optimizer.step`` (its state, and its short-lived temporaries);
- ``temporaries``: everything else (forward outputs not saved, backward temporaries, results).

Under ``FakeTensorMode`` no operator computes anything, so values that decide control flow are unknown.
:func:`fake_session` adds :class:`DataDependentAnswers`, which answers the few the project's code asks for: a float
``.item()`` reads 1.0 (loss logging, range and non-zero checks), a bool reads False when it is an ``.any()`` (checks
such as ``if bool((norm < eps).any()): raise``) and True otherwise (``bool((hi > lo).all())``), and ``bincount``
with ``minlength`` returns ``minlength`` counts (packed-ray code, where every index is below ``minlength``). Each
answer is counted in :attr:`DataDependentAnswers.substitutions`; an integer ``.item()`` (a size) raises
:class:`DataDependentValueError`, because a made-up size would silently change the memory. Operators whose tensor
arguments are all real (host-side values such as a scheduler's timesteps, ``torch.from_numpy`` data) run for real.

Memory that no tensor returned by an operator owns is not seen: the CUDA context, cuBLAS/cuDNN handles, the
workspaces kernels allocate for themselves (cuDNN, cuBLAS), and the allocator's fragmentation. :mod:`memory.budgets`
adds a stated margin.

Examples:
    >>> tracker = LiveStorageTracker()
    >>> with tracker:
    ...     a = torch.empty(1024)            # 4 KiB
    ...     b = a * 2                        # +4 KiB, peak 8 KiB
    ...     del a
    >>> tracker.peak, tracker.total
    (8192, 4096)
"""

from __future__ import annotations

import contextlib
import traceback
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

__all__ = [
    "CATEGORIES",
    "CUDA_GRANULARITY",
    "DataDependentValueError",
    "LiveStorageTracker",
    "Snapshot",
    "DataDependentAnswers",
    "FakeSession",
    "fake_session",
    "real_tensors",
    "to_fake",
]

CATEGORIES = ("weights", "activations", "gradients", "optimizer", "temporaries")

CUDA_GRANULARITY = 512
"""Bytes: PyTorch's CUDA caching allocator rounds every block up to a multiple of 512 (``kMinBlockSize`` in
``c10/cuda/CUDACachingAllocator.cpp``)."""


class DataDependentValueError(RuntimeError):
    """Fake tensors cannot say an integer value (a size) that the code asks for; the model needs it stated."""


@dataclass
class Snapshot:
    """Bytes per category at one moment (``total`` is their sum)."""

    by_category: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))

    @property
    def total(self) -> int:
        return sum(self.by_category.values())

    def copy(self) -> Snapshot:
        return Snapshot(dict(self.by_category))


class _Entry:
    __slots__ = ("category", "nbytes", "ref")

    def __init__(self, nbytes: int, category: str) -> None:
        self.nbytes, self.category, self.ref = nbytes, category, None


class LiveStorageTracker(TorchDispatchMode):
    """Running total and peak of live tensor storages, with a split by category (see the module docstring).

    Args:
        granularity: bytes every storage is rounded up to (1: exact; :data:`CUDA_GRANULARITY` for the CUDA model).

        peak_site: also record where (within 1 %) the peak was reached: the project's frames of the stack.

    Attributes:
        total: bytes live now; peak: the largest ``total`` seen since entry (or :meth:`reset_peak`).
        peak_snapshot: the split of ``peak`` by category.
        peak_site: ``file:line function`` of the project's frames (``lift3d/``, ``nerf/``) there, innermost last.
    """

    def __init__(self, granularity: int = 1, peak_site: bool = False) -> None:
        super().__init__()
        self.granularity = max(1, int(granularity))
        self.peak_site: list[str] = []
        self._site_every = 0.01 if peak_site else None
        self._site_total = 0
        self._entries: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.current = Snapshot()
        self.total = 0
        self.peak = 0
        self.peak_snapshot = Snapshot()
        self._in_optimizer = 0
        self._hooks: list[Any] = []
        self._saved_hooks: contextlib.AbstractContextManager | None = None

    # ------------------------------------------------------------------------------------------- bookkeeping
    def _rounded(self, nbytes: int) -> int:
        g = self.granularity
        return -(-int(nbytes) // g) * g if nbytes > 0 else 0

    def _add(self, tensor: torch.Tensor, category: str) -> None:
        if tensor.layout != torch.strided:
            return
        storage = tensor.untyped_storage()
        entry = self._entries.get(storage)
        if entry is not None:  # known storage: only a resize (out= arguments) changes it
            size = self._rounded(storage.nbytes())
            if size != entry.nbytes:
                self._change(entry.category, size - entry.nbytes)
                entry.nbytes = size
            return
        entry = _Entry(self._rounded(storage.nbytes()), category)
        entry.ref = weakref.ref(storage, lambda _ref, e=entry: self._release(e))
        self._entries[storage] = entry
        self._change(category, entry.nbytes)

    def _release(self, entry: _Entry) -> None:
        self._change(entry.category, -entry.nbytes)
        entry.nbytes = 0

    def _change(self, category: str, delta: int) -> None:
        self.current.by_category[category] += delta
        self.total += delta
        if self.total > self.peak:
            self.peak = self.total
            self.peak_snapshot = self.current.copy()
            if self._site_every is not None and self.total > self._site_total * (1 + self._site_every):
                self._site_total = self.total
                self.peak_site = _project_frames()

    def _recategorise(self, tensor: torch.Tensor, category: str, only_from: Iterable[str] = ("temporaries",)) -> None:
        entry = self._entries.get(tensor.untyped_storage())
        if entry is None:
            self._add(tensor, category)
        elif entry.category != category and entry.category in only_from:
            self.current.by_category[entry.category] -= entry.nbytes
            self.current.by_category[category] += entry.nbytes
            entry.category = category

    def register(self, *objects: Any, category: str = "weights") -> None:
        """Count storages that exist already: modules (parameters and buffers), optimisers (state), tensors, or
        containers of them. Parameters that require grad get a hook that files their ``.grad`` as gradients."""
        for obj in objects:
            if isinstance(obj, torch.nn.Module):
                for tensor in [*obj.parameters(), *obj.buffers()]:
                    self._add(tensor, category)
                for parameter in obj.parameters():
                    if parameter.requires_grad:
                        self._hooks.append(parameter.register_post_accumulate_grad_hook(self._grad_hook))
                        if parameter.grad is not None:
                            self._add(parameter.grad, "gradients")
            elif isinstance(obj, torch.optim.Optimizer):
                for state in obj.state.values():
                    self.register(*state.values(), category="optimizer")
            elif isinstance(obj, torch.Tensor):
                self._add(obj, category)
            elif isinstance(obj, dict):
                self.register(*obj.values(), category=category)
            elif isinstance(obj, (list, tuple)):
                self.register(*obj, category=category)

    def reset_peak(self) -> None:
        """Start a new peak from what is live now."""
        self.peak = self.total
        self.peak_snapshot = self.current.copy()

    # ------------------------------------------------------------------------------------------------- hooks
    def _grad_hook(self, parameter: torch.Tensor) -> None:
        if parameter.grad is not None:
            self._recategorise(parameter.grad, "gradients")

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided:
            self._recategorise(tensor, "activations")
        return tensor

    def _optimizer_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._in_optimizer += 1

    def _optimizer_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._in_optimizer -= 1
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    self._recategorise(value, "optimizer", only_from=CATEGORIES)

    def __enter__(self) -> LiveStorageTracker:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self._hooks += [register_optimizer_step_pre_hook(self._optimizer_pre),
                        register_optimizer_step_post_hook(self._optimizer_post)]
        self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._saved_hooks.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            if self._saved_hooks is not None:
                self._saved_hooks.__exit__(None, None, None)
                self._saved_hooks = None
            for handle in self._hooks:
                handle.remove()
            self._hooks.clear()

    # ------------------------------------------------------------------------------------------------ dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func in _METADATA_OPS:  # no storage: answered at once (a FakeTensor's .device comes this way)
            return func(*args, **(kwargs or {}))
        out = func(*args, **(kwargs or {}))
        category = "optimizer" if self._in_optimizer else "temporaries"
        if isinstance(out, torch.Tensor):
            self._add(out, category)
        elif isinstance(out, (tuple, list)):
            for tensor in tree_flatten(out)[0]:
                if isinstance(tensor, torch.Tensor):
                    self._add(tensor, category)
        return out

# ---------------------------------------------------------------------------------------------- fake tensors
def _project_frames() -> list[str]:
    frames = traceback.extract_stack(limit=60)
    return [f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames
            if any(part in f.filename for part in ("/lift3d/", "/nerf/"))]


_METADATA_OPS = {torch.ops.prim.device.default, torch.ops.aten.sym_size.int, torch.ops.aten.sym_stride.int,
                 torch.ops.aten.sym_numel.default, torch.ops.aten.sym_storage_offset.default, torch.ops.aten.dim.default}
"""Operators that return metadata, not tensors."""


def _tensor_kind(args: tuple, kwargs: dict) -> str:
    """``"fake"`` if any tensor argument is fake, ``"real"`` if there are tensor arguments and none is, else
    ``"none"`` (factories). Looks one list deep, which covers aten's signatures."""
    kind = "none"
    for value in (*args, *kwargs.values()):
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, FakeTensor):
                return "fake"
            if isinstance(item, torch.Tensor):
                kind = "real"
    return kind


class DataDependentAnswers(TorchDispatchMode):
    """Answers, for fake tensors, the few data-dependent questions the project's code asks (see the module
    docstring); counts each kind in :attr:`substitutions`. Operators whose tensor arguments are all real run for
    real (host-side values that steer the code, e.g. a scheduler's timestep arithmetic); factories stay fake."""

    def __init__(self) -> None:
        super().__init__()
        self.substitutions: dict[str, int] = {}
        self._reductions: WeakIdKeyDictionary = WeakIdKeyDictionary()  # fake bool tensor -> "any" / "all"
        self._questions = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.bincount.default}
        self._reduction_ops = {torch.ops.aten.any, torch.ops.aten.all}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func in _METADATA_OPS:
            return func(*args, **kwargs)
        kind = _tensor_kind(args, kwargs)
        if kind == "real":  # host-side values (a scheduler's timesteps and tables): computed for real
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        if kind == "fake" and func in self._questions:
            answer = self._data_dependent(func, args, kwargs)
            if answer is not None:
                return answer[0]
        out = func(*args, **kwargs)
        if func.overloadpacket in self._reduction_ops and isinstance(out, FakeTensor):
            self._reductions[out] = func.overloadpacket.__name__
        return out

    def _data_dependent(self, func, args, kwargs) -> tuple[Any] | None:  # noqa: ANN001
        """What a fake tensor cannot compute but the code needs (see the module docstring), or None."""
        aten = torch.ops.aten
        if func is aten._local_scalar_dense.default:
            (tensor,) = args
            if getattr(tensor, "constant", None) is not None:  # FakeTensorMode knows small constants' values
                return None
            if tensor.dtype == torch.bool:
                if self._reductions.get(tensor) == "any":  # "raise if any is bad": nothing is
                    return (self._substitute("any() -> False", False),)
                return (self._substitute("bool item -> True", True),)
            if tensor.is_floating_point() or tensor.is_complex():
                return (self._substitute("float item -> 1.0", 1.0),)
            raise DataDependentValueError(
                "an integer value of a fake tensor was asked for (a size that depends on data); model that code "
                "path with a stated size instead (e.g. memory.nerf_sampling for the occupancy-grid sampler)")
        if func is aten.bincount.default:
            minlength = kwargs.get("minlength", args[2] if len(args) > 2 else 0)
            if not minlength:
                raise DataDependentValueError("bincount without minlength has a data-dependent size")
            self._substitute("bincount -> minlength bins", None)
            return (torch.zeros(int(minlength), dtype=torch.int64, device=args[0].device),)
        return None

    def _substitute(self, kind: str, value: Any) -> Any:
        self.substitutions[kind] = self.substitutions.get(kind, 0) + 1
        return value



def _numpy_dtype(dtype: torch.dtype) -> type:
    return {
        torch.float16: np.float16, torch.bfloat16: np.float32, torch.float32: np.float32,
        torch.float64: np.float64, torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16,
        torch.int8: np.int8, torch.uint8: np.uint8, torch.bool: np.bool_,
    }.get(dtype, np.float32)


@dataclass
class FakeSession:
    """The modes of :func:`fake_session`: ``mode`` (for :func:`to_fake`) and ``answers`` (its substitutions)."""

    mode: FakeTensorMode
    answers: DataDependentAnswers


@contextlib.contextmanager
def fake_session() -> Iterator[FakeSession]:
    """A ``FakeTensorMode`` (real CPU tensors allowed as inputs, e.g. a scheduler's tables) in which a fake tensor's
    ``.numpy()`` (the device → host boundary: images, meshes) returns zeros of its shape and dtype, and
    ``Module.to`` converts a module with fake tensors by replacing its parameters and buffers (torch would swap
    them, which fails for tensors a ``FakeTensorMode`` holds weak references to), and ``torch.from_numpy`` stays
    real (host data such as a scheduler's timesteps: values that steer the loop)."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    original = torch.Tensor.numpy
    original_to = torch.nn.Module.to

    def module_to(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)

        def convert(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)

        tensors = [*self.parameters(), *self.buffers()]
        if not any(isinstance(t, FakeTensor) for t in tensors):
            return original_to(self, *args, **kwargs)
        for sub in self.modules():  # convert by replacement: torch would swap the fake tensors, which fails
            for name, parameter in list(sub._parameters.items()):
                if parameter is not None:
                    new = convert(parameter)
                    if new is not parameter:
                        sub._parameters[name] = torch.nn.Parameter(new.detach(),
                                                                   requires_grad=parameter.requires_grad)
            for name, buffer in list(sub._buffers.items()):
                if buffer is not None:
                    sub._buffers[name] = convert(buffer)
        return self

    def numpy(self: torch.Tensor, *args: Any, **kwargs: Any) -> np.ndarray:
        if isinstance(self, FakeTensor):
            return np.zeros(tuple(self.shape), dtype=_numpy_dtype(self.dtype))
        return original(self, *args, **kwargs)

    from_numpy = torch.from_numpy

    def real_from_numpy(array: np.ndarray) -> torch.Tensor:
        with unset_fake_temporarily():
            return from_numpy(array)

    torch.Tensor.numpy = numpy  # type: ignore[method-assign]
    torch.nn.Module.to = module_to  # type: ignore[method-assign]
    torch.from_numpy = real_from_numpy
    answers = DataDependentAnswers()
    try:
        with mode, answers:
            yield FakeSession(mode, answers)
    finally:
        torch.Tensor.numpy = original  # type: ignore[method-assign]
        torch.nn.Module.to = original_to  # type: ignore[method-assign]
        torch.from_numpy = from_numpy


def real_tensors() -> contextlib.AbstractContextManager:
    """Inside a :func:`fake_session`, a block whose new tensors are real (model construction, small measurements);
    outside one, nothing changes."""
    return unset_fake_temporarily()


def to_fake(module: torch.nn.Module, mode: FakeTensorMode, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Replace every parameter and buffer of ``module`` (real or on the meta device) by a fake tensor of the same
    shape, strides and dtype on ``device``, in place; returns ``module``. Shared tensors stay shared."""
    tensors: dict[int, torch.Tensor] = {}
    parameters: dict[int, torch.nn.Parameter] = {}

    def fake(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in tensors:
            with mode:
                tensors[id(tensor)] = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype,
                                                          device=device)
        return tensors[id(tensor)]

    for sub in module.modules():
        for name, parameter in list(sub._parameters.items()):
            if parameter is not None:
                if id(parameter) not in parameters:
                    parameters[id(parameter)] = torch.nn.Parameter(fake(parameter),
                                                                   requires_grad=parameter.requires_grad)
                sub._parameters[name] = parameters[id(parameter)]
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None:
                sub._buffers[name] = fake(buffer)
    return module
