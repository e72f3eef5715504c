"""A stand-in GPU for CPU-only machines: catches host/device mix-ups in the notebooks' GPU path.

Under :func:`fake_cuda`, ``torch.cuda.is_available()`` is True, so ``labsupport.pick_device("auto")``
picks ``cuda``. A tensor moved there (``.to("cuda")``, ``.cuda()``, a factory with
``device="cuda"``, ``Module.to``) becomes a :class:`DevTensor`: its values stay in CPU memory, but
it reports a device that is not the CPU, and, as on a real GPU,

* an op that mixes it with a CPU tensor of one or more dimensions raises "Expected all tensors to
  be on the same device" (0-dim CPU tensors and Python scalars are allowed, CPU index tensors too);
* ``.numpy()`` raises until ``.cpu()`` brings it back.

The stand-in device is ``meta`` (not ``cuda``: autograd asks a CUDA device for its stream, which
needs a driver). What it does not emulate: CUDA kernels, streams, memory limits, bfloat16
autocast on CUDA (``torch.autocast("cuda")`` switches itself off without a driver). So it proves
that data reaches the model's device and results come back, not CUDA numerics.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

STAND_IN = torch.device("meta")
_INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_", "_unsafe_index", "index_select"}
_SCALARS = (bool, int, float)


def _unwrap(t):
    return t.inner if isinstance(t, DevTensor) else t


def _wrap(out):
    return tree_map(lambda t: DevTensor(t) if type(t) is torch.Tensor else t, out)


def _on_device(device) -> bool:
    return device is not None and not isinstance(device, torch.Tensor) and torch.device(device).type in ("cuda", "meta")


class DevTensor(torch.Tensor):
    """A CPU tensor (``inner``) that reports the stand-in device."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        if isinstance(inner, DevTensor):
            return inner
        r = torch.Tensor._make_wrapper_subclass(cls, inner.size(), strides=inner.stride(),
                                                storage_offset=inner.storage_offset(), dtype=inner.dtype,
                                                layout=inner.layout, device=STAND_IN,
                                                requires_grad=inner.requires_grad)
        r.inner = inner
        return r

    def __repr__(self, *, tensor_contents=None):
        return f"DevTensor({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = func.overloadpacket.__name__
        if name == "_to_copy":   # .to(...) of a DevTensor: to the CPU unwraps, anything else stays
            dst = kwargs.pop("device", None)
            kwargs.pop("pin_memory", None)
            out = func(_unwrap(args[0]), **kwargs)
            return out if dst is not None and torch.device(dst).type == "cpu" else DevTensor(out)
        if name == "_local_scalar_dense":   # .item()
            return func(_unwrap(args[0]))
        flat, _ = tree_flatten((args, kwargs))
        host = [t for t in flat if isinstance(t, torch.Tensor) and not isinstance(t, DevTensor) and t.dim() > 0]
        if host and name == "copy_":
            pass   # copies between devices are what .copy_ is for
        elif host and name in _INDEXING and isinstance(args[0], DevTensor):
            values = args[2] if name not in ("index", "index_select") and len(args) > 2 else None
            if isinstance(values, torch.Tensor) and not isinstance(values, DevTensor) and values.dim() > 0:
                raise RuntimeError(f"{func}: the values are on the CPU, the tensor on the device")
        elif host:
            raise RuntimeError("Expected all tensors to be on the same device, but found at least two devices, "
                               f"the device and cpu! (in {func})")
        if name == "copy_":
            _unwrap(args[0]).copy_(_unwrap(args[1]), *args[2:])
            return args[0]
        if _on_device(kwargs.get("device")):
            kwargs["device"] = torch.device("cpu")
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        if name.endswith("_") and isinstance(args[0], DevTensor) and isinstance(out, torch.Tensor):
            return args[0]   # in-place ops return their (wrapped) self
        return _wrap(out)

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert a device tensor to numpy. Use Tensor.cpu() to copy the tensor to host "
                        "memory first.")

    def __array__(self, *args, **kwargs):
        return self.numpy()


class _ToDevice(torch.autograd.Function):
    """CPU -> device for a tensor that requires grad (the gradient flows back to the CPU tensor)."""

    @staticmethod
    def forward(ctx, x):
        return DevTensor(x.detach().clone())

    @staticmethod
    def backward(ctx, grad):
        return _unwrap(grad)


def _to_device(src: torch.Tensor) -> torch.Tensor:
    if src.requires_grad and torch.is_grad_enabled():
        return _ToDevice.apply(src)
    return DevTensor(src.detach().clone())


def _attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``scaled_dot_product_attention`` by its definition, in ops on the device: PyTorch's own
    fallback builds its causal mask on the stand-in device itself, where it has no values."""
    if enable_gqa and k.size(-3) != q.size(-3):   # grouped-query attention: each key/value head serves a group
        k = k.repeat_interleave(q.size(-3) // k.size(-3), -3)
        v = v.repeat_interleave(q.size(-3) // v.size(-3), -3)
    scores = q @ k.transpose(-2, -1) * (q.size(-1) ** -0.5 if scale is None else scale)
    if is_causal:
        attn_mask = DevTensor(torch.ones(q.size(-2), k.size(-2), dtype=torch.bool).tril())
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    weights = torch.nn.functional.dropout(scores.softmax(-1), dropout_p) if dropout_p else scores.softmax(-1)
    return weights @ v


class _Functions(TorchFunctionMode):
    """Intercepts the calls that would reach the CUDA runtime: moves to the device and factories."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        src = args[0] if args else None
        if func in (torch.Tensor.to, torch.Tensor.cuda) and isinstance(src, torch.Tensor):
            if func is torch.Tensor.cuda:
                return src if isinstance(src, DevTensor) else _to_device(src)
            device, dtype, *_ = torch._C._nn._parse_to(*args[1:], **kwargs)
            if _on_device(device):
                if dtype is not None:
                    src = src.to(dtype=dtype)
                return src if isinstance(src, DevTensor) else _to_device(src)
        if func is torch.where and len(args) == 3 and any(isinstance(a, DevTensor) for a in args) \
                and any(isinstance(a, _SCALARS) for a in args[1:]):
            # CUDA puts a Python scalar on the device as a 0-dim tensor; the stand-in cannot hold its value
            return func(*(torch.tensor(a) if isinstance(a, _SCALARS) else a for a in args), **kwargs)
        if func is torch.nn.functional.scaled_dot_product_attention and isinstance(src, DevTensor):
            return _attention(*args, **kwargs)
        if _on_device(kwargs.get("device")):
            kwargs = dict(kwargs, device="cpu")
            if "pin_memory" in kwargs:
                kwargs["pin_memory"] = False
            return _wrap(func(*args, **kwargs))
        return func(*args, **kwargs)


@contextlib.contextmanager
def fake_cuda():
    """Pretend that a CUDA GPU exists (module docstring) in this thread until the block ends."""
    import torch.cuda as tc

    fakes = {"is_available": lambda: True, "device_count": lambda: 1, "current_device": lambda: 0,
             "get_device_name": lambda *a, **k: "stand-in GPU", "is_bf16_supported": lambda *a, **k: True,
             "max_memory_allocated": lambda *a, **k: 0,
             "get_rng_state": lambda *a, **k: torch.zeros(8, dtype=torch.uint8)}
    for name in ("_lazy_init", "synchronize", "reset_peak_memory_stats", "empty_cache", "manual_seed",
                 "manual_seed_all", "set_rng_state"):
        fakes[name] = lambda *a, **k: None
    saved = {name: getattr(tc, name) for name in fakes}
    check = torch.optim.Optimizer._accelerator_graph_capture_health_check
    try:
        for name, fake in fakes.items():
            setattr(tc, name, fake)
        torch.optim.Optimizer._accelerator_graph_capture_health_check = lambda self: None   # asks for a stream
        with _Functions():
            yield
    finally:
        torch.optim.Optimizer._accelerator_graph_capture_health_check = check
        for name, real in saved.items():
            setattr(tc, name, real)
