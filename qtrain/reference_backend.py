"""The "reference" backend: a thin torch adapter over qtrain.reference (spec/ exactly, on CPU).

Tensors cross to NumPy bit for bit: bf16 through an int16 view, float8 through a uint8 view;
fp16 is widened to fp32 (exact). Results come back on the input's device.
"""
import ml_dtypes
import numpy as np
import torch

from . import backend as _backend

_NP_FLOAT8 = {name: getattr(ml_dtypes, name) for name in
              ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")}
_TORCH_FLOAT8 = {name: getattr(torch, name) for name in _NP_FLOAT8}
_NP_OUT = {torch.float32: np.float32, torch.bfloat16: ml_dtypes.bfloat16}


def to_numpy(t):
    """torch tensor -> NumPy array holding exactly the same values (fp16 widened to fp32)."""
    # clone: .numpy() marks the storage it shares as non-resizable, and FSDP2 frees gathered
    # weights by resizing their storage to 0 (change made for qtrain/fsdp.py, issue 7).
    t = t.detach().cpu().contiguous().clone()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    if t.dtype == torch.float16:
        return t.float().numpy()
    for name, dtype in _TORCH_FLOAT8.items():
        if t.dtype == dtype:
            return t.view(torch.uint8).numpy().view(_NP_FLOAT8[name])
    return t.numpy()


def to_torch(a, device):
    """NumPy array (float32/64, bf16, float8, int8, uint8) -> torch tensor on `device`."""
    a = np.array(a, copy=True, order="C")
    if a.dtype == ml_dtypes.bfloat16:
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    elif a.dtype.name in _NP_FLOAT8:
        t = torch.from_numpy(a.view(np.uint8)).view(_TORCH_FLOAT8[a.dtype.name])
    else:
        t = torch.from_numpy(a)
    return t.to(device)


def _np_out(op, out_dtype):
    """The NumPy dtype of a product's out_dtype (MM-2: float32 or bfloat16 only)."""
    if out_dtype not in _NP_OUT:
        raise TypeError(f"qtrain.reference_backend.{op}: out_dtype must be float32 or bfloat16 "
                        f"(MM-2), got {out_dtype}")
    return _NP_OUT[out_dtype]


def _t(x, transposed):
    if not transposed:
        return x
    if x.dim() != 2:
        raise ValueError(f"transposed quantization needs a 2-D tensor, got shape {tuple(x.shape)}")
    return x.t()


def _ref():
    import qtrain.reference as ref  # imported late: NumPy-only package, may land after us
    return ref


class ReferenceBackend:
    """Runs every op through qtrain.reference; always available where NumPy is."""

    name = "reference"

    def available(self):
        try:
            _ref()
        except ImportError as e:
            return False, f"qtrain.reference does not import: {e}"
        return True, "NumPy reference (CPU, bit-exact to spec/)"

    # transposed=True quantizes x.T: the reference simply materializes it (the fast backend
    # writes that layout directly from x instead).
    def quantize_float8(self, x, fmt, axis, pow2_scale, transposed=False):
        data, quant_scale = _ref().quantize_float8(to_numpy(_t(x, transposed)), fmt, axis=axis,
                                                   pow2_scale=pow2_scale)
        return to_torch(data, x.device), to_torch(quant_scale, x.device)

    def quantize_mx(self, x, elem_fmt, block_size, axis, scale_mode, transposed=False):
        data, scale_bits = _ref().quantize_mx(to_numpy(_t(x, transposed)), elem_fmt,
                                              block_size=block_size, axis=axis,
                                              scale_mode=scale_mode)
        return to_torch(data, x.device), to_torch(scale_bits, x.device)

    def quantize_int8(self, x, axis, noise, transposed=False):
        noise_np = None if noise is None else to_numpy(noise).astype(np.float32)
        data, dequant_scale = _ref().quantize_int8(to_numpy(_t(x, transposed)), axis,
                                                   noise=noise_np)
        return to_torch(data, x.device), to_torch(dequant_scale, x.device)

    def uniform_noise(self, like, seed, call):
        """I8-10 noise (NumPy); the call index is read on the host, which the CPU reference
        can afford."""
        return to_torch(_ref().uniform_noise(tuple(like.shape), seed, int(call)), like.device)

    def quantize_blockwise(self, x, block, fmt, transposed=False):
        data, quant_scale = _ref().quantize_blockwise(to_numpy(_t(x, transposed)),
                                                      block=tuple(block), fmt=fmt)
        return to_torch(data, x.device), to_torch(quant_scale, x.device)

    def scaled_mm_nt(self, a, a_dequant, b, b_dequant, out_dtype, use_fast_accum=False):
        # use_fast_accum is a permission (RC-3), not a requirement: the reference is exact.
        out = _ref().scaled_mm_nt(to_numpy(a), to_numpy(a_dequant), to_numpy(b),
                                  to_numpy(b_dequant), out_dtype=_np_out("scaled_mm_nt", out_dtype))
        return to_torch(out, a.device)

    def quantize_mx_values(self, x, elem_fmt, block_size, axis, scale_mode):
        return to_torch(_ref().quantize_mx_values(to_numpy(x), elem_fmt, block_size, axis,
                                                  scale_mode), x.device)

    def mm_mx_values(self, a, a_dequant, b, b_dequant):
        out = _ref().mm_mx_values(to_numpy(a), None if a_dequant is None else to_numpy(a_dequant),
                                  to_numpy(b), None if b_dequant is None else to_numpy(b_dequant),
                                  out_dtype=_np_out("mm_mx_values", torch.bfloat16))
        return to_torch(out, a.device)

    # ---- grouped products (MM-5, RC-13), served to qtrain/grouped_ops.py ----------------------
    def quantize_float8_grouped_t(self, x, offs, align, fmt, pow2_scale, padded_offs=None):
        """F8-7 along axis 0 within each group, payload transposed into the padded layout."""
        data_t, qs = _ref().quantize_float8_grouped_t(to_numpy(x), to_numpy(offs), align, fmt,
                                                      pow2_scale)
        return to_torch(data_t, x.device), to_torch(qs, x.device)

    def quantize_float8_experts_t(self, w, fmt, pow2_scale):
        """w (E, N, K): every w[e].T quantized rowwise (F8-7 along N within expert e)."""
        data, qs = _ref().quantize_float8_experts_t(to_numpy(w), fmt, pow2_scale)
        return to_torch(data, w.device), to_torch(qs, w.device)

    def mm_mx_values_grouped(self, a, a_dequant, b, b_dequant, offs, group_align=1):
        opt = lambda d: None if d is None else to_numpy(d)            # noqa: E731
        out = _ref().mm_mx_values_grouped(to_numpy(a), opt(a_dequant), to_numpy(b),
                                          opt(b_dequant), to_numpy(offs),
                                          out_dtype=_np_out("mm_mx_values_grouped",
                                                            torch.bfloat16))
        return to_torch(out, a.device)

    def scaled_grouped_mm(self, a, a_dequant, b, b_dequant, offs, out_dtype, group_align=1):
        # group_align is a layout promise for kernels; the reference reads any layout
        out = _ref().scaled_grouped_mm(to_numpy(a), to_numpy(a_dequant), to_numpy(b),
                                       to_numpy(b_dequant), to_numpy(offs),
                                       out_dtype=_np_out("scaled_grouped_mm", out_dtype))
        return to_torch(out, a.device)


_backend.register_backend("reference", ReferenceBackend)
