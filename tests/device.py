"""A device-strictness harness: run code as if on an accelerator, on the CPU.

`OnDevice` is a tensor that reports the device FAKE (not the CPU) and computes on the CPU tensor it
wraps. Under `Strict()` (a TorchDispatchMode) every aten op is checked and recorded:
- `mixed`: an op combining an OnDevice tensor with a CPU tensor of one or more dimensions (CUDA
  accepts 0-d CPU tensors as scalars, and copies between devices), e.g. `torch.ones(shape)` beside a
  model tensor;
- `cpu_generators`: a CPU `torch.Generator` driving an op whose output is on the device (on CUDA:
  "Expected a 'cuda' device type for generator");
- `syncs`: ops that make the host wait for the device (`.item()`, `bool()`, `.tolist()`, copies
  to the CPU, boolean-mask indexing and other ops whose output size depends on the data).
Factories asked for the device (`torch.zeros(..., device=x.device)`) give OnDevice tensors, and
`module.to(FAKE)` moves a model; under Strict(), torch.tensor / torch.as_tensor with
device=FAKE give OnDevice tensors too. FAKE is the meta device type: the autograd engine runs its
backward like a CPU tensor's, and code paths that test `device.type == "cuda"` are not taken.
`.numpy()` raises, as on CUDA. Each finding keeps the innermost frame in src/ that made it.

With LATENT_LENS_STRICT_DEVICE=cuda (`make gpu-check`) the same suite runs on that real device:
`to_device` moves there, mixing devices and CPU generators fail natively, and Strict still counts
the host syncs; `same` then compares with the CPU by shape, dtype and finiteness only (other
kernels round differently; bench/gpu_check.py's parity step bounds the numbers).
"""

from __future__ import annotations

import copy
import os
import traceback
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

REAL = os.environ.get("LATENT_LENS_STRICT_DEVICE") or None  # a real accelerator to run the suite on
FAKE = torch.device(REAL) if REAL else torch.device("meta")
aten = torch.ops.aten

_COPIES = {aten._to_copy.default, aten.copy_.default, aten.copy.default, aten.lift_fresh.default}
# ops whose output size (or result) the host must read from the device
_DATA_DEPENDENT = {
    "nonzero",
    "masked_select",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "equal",
    "is_nonzero",
    "bincount",
    "_local_scalar_dense",
    "masked_scatter",
    "masked_scatter_",
}
_BOOL_INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}
_ACTIVE: list[Strict] = []


def _where() -> str:
    """The innermost frame in the project's src/ (else the caller outside torch)."""
    frames = traceback.extract_stack()[:-3]
    for frame in reversed(frames):
        if "/src/" in frame.filename and "/site-packages/" not in frame.filename:
            return f"{frame.filename.split('/src/')[-1]}:{frame.lineno} {frame.name}"
    for frame in reversed(frames):
        if "/torch/" not in frame.filename and "/tests/device.py" not in frame.filename:
            return f"{frame.filename}:{frame.lineno} {frame.name}"
    return "?"


class OnDevice(torch.Tensor):
    """A CPU tensor `elem` that reports FAKE as its device (see the module docstring)."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        out = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.shape,
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=FAKE,
            requires_grad=elem.requires_grad,
        )
        out.elem = elem
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # indexing with Python lists: torch builds the index tensor on the indexed tensor's device
        # with the dispatch mode off (a meta tensor without values); build it here, as CUDA would
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
            args = (args[0], _lists_on_device(args[1]), *args[2:])
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if not _ACTIVE:
            raise RuntimeError(f"an OnDevice tensor reached {func} outside Strict()")
        return _ACTIVE[-1].run(func, args, kwargs or {})

    def tolist(self):
        _ACTIVE[-1].record_sync("tolist")
        return self.elem.tolist()

    def __repr__(self) -> str:
        return f"OnDevice({self.elem!r})"


def _lists_on_device(index):
    if isinstance(index, list):
        return torch.tensor(index).to(FAKE)
    if isinstance(index, tuple):
        return tuple(_lists_on_device(i) for i in index)
    return index


def _from_data(factory: Callable) -> Callable:
    """torch.tensor / torch.as_tensor that give an OnDevice tensor for device=FAKE: torch builds
    the tensor from Python data with the dispatch mode switched off, so a meta tensor would lose
    its values; this one builds it on the CPU and moves it through the mode."""

    def make(data, *args, device=None, **kwargs):
        if not _is_fake_device(device):
            return factory(data, *args, device=device, **kwargs)
        return factory(data, *args, **kwargs).to(FAKE)

    return make


def _is_fake_device(device) -> bool:
    return device is not None and torch.device(device).type == FAKE.type


class Strict(TorchDispatchMode):
    """The dispatch mode that checks and records (see the module docstring); `check()` raises
    AssertionError listing what was found. `steps` counts calls of `step()` (a loop's progress
    callback), so `syncs_per_step()` reads the host syncs between the first and the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.mixed: list[str] = []
        self.cpu_generators: list[str] = []
        self.syncs: list[str] = []
        self.marks: list[int] = []

    def __enter__(self):
        _ACTIVE.append(self)
        self._saved = torch.tensor, torch.as_tensor
        if not REAL:
            torch.tensor, torch.as_tensor = _from_data(torch.tensor), _from_data(torch.as_tensor)
        return super().__enter__()

    def __exit__(self, *exc):
        _ACTIVE.remove(self)
        torch.tensor, torch.as_tensor = self._saved
        return super().__exit__(*exc)

    # -- recording ------------------------------------------------------------------------------

    def record_sync(self, what: str) -> None:
        self.syncs.append(f"{what} at {_where()}")

    def step(self, *_ignored) -> None:
        """A progress callback: marks a loop step (`progress(done, total)`)."""
        self.marks.append(len(self.syncs))

    def syncs_per_step(self) -> float:
        """Host syncs per loop step, between the first and the last marked step."""
        if len(self.marks) < 2:
            raise AssertionError(f"{len(self.marks)} steps marked: pass Strict.step as the loop's progress")
        return (self.marks[-1] - self.marks[0]) / (len(self.marks) - 1)

    def check(self) -> None:
        problems = [f"mixed devices: {m}" for m in dict.fromkeys(self.mixed)]
        problems += [f"CPU generator on the device: {g}" for g in dict.fromkeys(self.cpu_generators)]
        if problems:
            raise AssertionError("\n".join(problems[:20]))

    # -- the op ---------------------------------------------------------------------------------

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self.run(func, args, kwargs or {})

    def run(self, func, args, kwargs):
        leaves, _ = tree_flatten((args, kwargs))
        if REAL:
            return self.run_real(func, args, kwargs, leaves)
        lost = [t for t in leaves if type(t) is torch.Tensor and t.device.type == FAKE.type]
        if lost:
            raise RuntimeError(
                f"harness: {func} got a {FAKE.type} tensor without values (built by torch with the mode "
                f"off) at {_where()}; teach tests/device.py that path"
            )
        on_device = any(isinstance(t, OnDevice) for t in leaves)
        asked = kwargs.get("device")
        to_device = _is_fake_device(asked)
        if on_device and func not in _COPIES:
            cpu = [
                t
                for t in leaves
                if isinstance(t, torch.Tensor)
                and not isinstance(t, OnDevice)
                and t.device.type == "cpu"
                and t.dim() > 0
            ]
            if cpu:
                shapes = ", ".join(str(tuple(t.shape)) for t in cpu)
                self.mixed.append(f"{func} with CPU tensors {shapes} at {_where()}")
        generator = kwargs.get("generator")
        if generator is not None and generator.device.type == "cpu" and (on_device or to_device):
            self.cpu_generators.append(f"{func} at {_where()}")
        to_cpu = func in _COPIES and asked is not None and torch.device(asked).type == "cpu"
        if func is aten.copy_.default and not isinstance(args[0], OnDevice) and isinstance(args[1], OnDevice):
            to_cpu = True
        if on_device:
            self.record_syncs(func, args, kwargs, to_cpu)
        unwrapped_args = tree_map(lambda t: t.elem if isinstance(t, OnDevice) else t, args)
        unwrapped_kwargs = tree_map(lambda t: t.elem if isinstance(t, OnDevice) else t, kwargs)
        if to_device:
            unwrapped_kwargs["device"] = torch.device("cpu")
        out = func(*unwrapped_args, **unwrapped_kwargs)
        if to_cpu or not (on_device or to_device):
            return out
        # in-place ops return their (wrapped) argument itself
        inputs = {id(t.elem): t for t in leaves if isinstance(t, OnDevice)}
        return tree_map(
            lambda t: (inputs[id(t)] if id(t) in inputs else OnDevice(t)) if isinstance(t, torch.Tensor) else t, out
        )

    def record_syncs(self, func, args, kwargs, to_cpu: bool) -> None:
        """The host syncs an op on the device makes (see the module docstring)."""
        name = func._schema.name.split("::")[-1]
        if name in _DATA_DEPENDENT:
            self.record_sync(name)
        elif name in _BOOL_INDEXING and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in tree_flatten(args[1:2])[0]
        ):
            self.record_sync(f"{name} with a boolean mask")
        elif name == "repeat_interleave" and kwargs.get("output_size") is None:
            self.record_sync(name)
        if to_cpu:
            self.record_sync("copy to the CPU")

    def run_real(self, func, args, kwargs, leaves):
        """On a real device: torch itself refuses mixed devices and CPU generators; count the syncs."""
        if any(isinstance(t, torch.Tensor) and t.device.type == FAKE.type for t in leaves):
            asked = kwargs.get("device")
            to_cpu = func in _COPIES and asked is not None and torch.device(asked).type == "cpu"
            if func is aten.copy_.default and args[0].device.type == "cpu" and args[1].device.type == FAKE.type:
                to_cpu = True
            self.record_syncs(func, args, kwargs, to_cpu)
        return func(*args, **kwargs)


def same(got, want, msg: str | None = None) -> None:
    """A device result equals the CPU's: exactly on the fake device (it runs the CPU's kernels); on
    a real one (REAL), the same shape and dtype, finite where the CPU's is (see the module
    docstring)."""
    got = got.detach().cpu() if got.device.type != "cpu" else got
    if not REAL:
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=msg)
        return
    assert got.shape == want.shape and got.dtype == want.dtype, msg
    if want.is_floating_point():
        assert bool(torch.isfinite(got)[torch.isfinite(want)].all()), msg


def to_device(obj):
    """A copy on FAKE of a tensor, a module (the original stays on the CPU) or a (nested) container
    of them; call it under Strict()."""

    def move(leaf):
        if isinstance(leaf, torch.nn.Module):
            return copy.deepcopy(leaf).to(FAKE)
        return leaf.to(FAKE) if isinstance(leaf, torch.Tensor) else leaf

    return tree_map(move, obj)


def strictly(fn: Callable, *args, **kwargs):
    """fn(*args, **kwargs) under a fresh Strict(); returns (result, the Strict with its findings)."""
    with Strict() as strict:
        out = fn(*args, **kwargs)
    return out, strict
