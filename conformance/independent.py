"""An independent path for the CPU quick set: spec/ restated with torch CPU ops (F8, MX, I8, BW, MM).

Written from the rules, not from qtrain.reference: frexp gives exact log2 floors, torch's own
float8 casts give rne (after an explicit clamp, FMT-3), float64 gives exact products. If it and the
reference agree bit for bit on the quick set, neither is likely to share a misreading of spec/.
Slow and simple on purpose; "torch-cpu" in the registry (registered by conformance/backends.py).
It also takes the training API's extra arguments (`transposed=True`: quantize x.T;
`use_fast_accum`: ignored, MM-3) and the grouped cast, so qtrain.linear and qtrain.grouped_mm
run on it too.
"""
import torch

from qtrain.formats import EPS_AMAX, FLOAT8_FORMATS, INT8_MAX, E8M0_BIAS, E8M0_NAN

NAN = float("nan")


def _round_out(v64, out_dtype):
    """fp64 -> out_dtype with ONE rne rounding (F8-8, MM-2). torch's double -> bfloat16 goes
    through float (two roundings), so bf16 is rounded here on the fp64 value first."""
    if out_dtype != torch.bfloat16:
        return v64.to(out_dtype)
    finite = torch.isfinite(v64) & (v64 != 0)
    _, e = torch.frexp(torch.where(finite, v64, torch.ones_like(v64)))
    quantum = torch.ldexp(torch.ones_like(v64), torch.clamp(e - 8, min=-133))   # bf16: 8 bits, min 2^-133
    rounded = torch.where(finite, torch.round(v64 / quantum) * quantum, v64)
    return rounded.float().to(torch.bfloat16)


def _f8(fmt):
    return FLOAT8_FORMATS[fmt], getattr(torch, fmt)


def _amax(x32, dims):
    """|x| max over dims, keepdims; NaN propagates (torch.amax propagates NaN) (F8-1)."""
    return x32.abs().amax(dim=dims, keepdim=True)


def _floor_log2(v):
    """Exact floor(log2(v)) for finite v > 0 (fp32 subnormals too): v = m 2^e, m in [0.5, 1)."""
    _, e = torch.frexp(v)
    return e - 1


def _ceil_log2(v):
    m, e = torch.frexp(v)
    return torch.where(m == 0.5, e - 1, e)


def _cast(y32, fmt):
    """FMT-2/FMT-3: clamp to +-max explicitly, then torch's rne cast; NaN stays NaN."""
    f, dtype = _f8(fmt)
    return torch.clamp(y32, -f.max, f.max).to(dtype)


def _float8_scale_and_cast(x32, amax, fmt, pow2):
    f, _ = _f8(fmt)
    a64 = amax.double()
    qs = (f.max / torch.clamp(a64, min=EPS_AMAX)).float()                  # F8-2
    if pow2:                                                               # F8-3
        qs = torch.where(torch.isfinite(qs), torch.ldexp(torch.ones_like(qs), _floor_log2(qs)), qs)
    bad = ~torch.isfinite(amax)                                            # F8-5
    qs = torch.where(bad, torch.full_like(qs, NAN), qs)
    y = x32 * qs                                                           # F8-4, fp32 product
    y = torch.where(bad.expand_as(y), torch.full_like(y, NAN), y)
    return _cast(y, fmt), qs


_INPUTS = (torch.float32, torch.bfloat16, torch.float16)


def _check_input(x, where):
    """FMT-5: float32, bfloat16, float16 only."""
    if x.dtype not in _INPUTS:
        raise TypeError(f"torch-cpu {where}: input dtype {x.dtype} not supported; use one of {_INPUTS}")


def _check_out(out_dtype, where):
    """FMT-6: dequantize and product outputs are float32 or bfloat16."""
    if out_dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"torch-cpu {where}: out_dtype {out_dtype} not supported; use float32 or bfloat16")


class TorchCpuBackend:
    name = "torch-cpu"

    def available(self):
        return True, "torch CPU restatement of spec/ (independent of qtrain.reference)"

    # I8-10 noise: no uniform_noise here, so the noise cases judge qtrain's torch-ops
    # generator (qtrain/noise.py), which training falls back to (qtrain.ops.draw_noise)

    # ---- float8 (F8-*) ----------------------------------------------------------------------
    def quantize_float8(self, x, fmt, axis, pow2_scale, transposed=False):
        x = x.t() if transposed else x
        _check_input(x, "quantize_float8")
        x32 = x.float()
        dims = tuple(range(x.dim())) if axis is None else (axis,)
        data, qs = _float8_scale_and_cast(x32, _amax(x32, dims), fmt, pow2_scale)
        return data, (qs.reshape(()) if axis is None else qs)              # F8-7

    def dequantize_float8(self, data, quant_scale, out_dtype):
        _check_out(out_dtype, "dequantize_float8")
        return _round_out(data.double() / quant_scale.double(), out_dtype)        # F8-8

    # ---- blockwise (BW-*) -------------------------------------------------------------------
    def _tiles(self, x, block):
        rows, cols = x.shape
        b0, b1 = block
        if rows % b0 or cols % b1:
            raise ValueError(f"torch-cpu quantize_blockwise: shape {tuple(x.shape)} not divisible "
                             f"by block {tuple(block)}")
        return x.reshape(rows // b0, b0, cols // b1, b1)

    def quantize_blockwise(self, x, block, fmt, transposed=False):
        x = x.t() if transposed else x
        _check_input(x, "quantize_blockwise")
        t = self._tiles(x.float(), block)
        data, qs = _float8_scale_and_cast(t, _amax(t, (1, 3)), fmt, False)
        return data.reshape(x.shape), qs.reshape(qs.shape[0], qs.shape[2])  # BW-3

    def dequantize_blockwise(self, data, quant_scale, block, out_dtype):
        t = self._tiles(data.double(), block)
        q = quant_scale.double()[:, None, :, None]
        return _round_out((t / q).reshape(data.shape), out_dtype)

    # ---- MX (MX-*) --------------------------------------------------------------------------
    def _blocks(self, x, block_size, axis):
        x = x.movedim(axis, -1)
        if x.shape[-1] % block_size:
            raise ValueError(f"torch-cpu quantize_mx: axis length {x.shape[-1]} of shape "
                             f"{tuple(x.shape)} is not a multiple of block {block_size}")
        return x.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)

    def quantize_mx(self, x, elem_fmt, block_size, axis, scale_mode, transposed=False):
        x = x.t() if transposed else x
        _check_input(x, "quantize_mx")
        if scale_mode not in ("floor", "rceil"):
            raise ValueError(f"torch-cpu quantize_mx: scale_mode {scale_mode!r}; use floor or rceil")
        f, _ = _f8(elem_fmt)
        b = self._blocks(x.float(), block_size, axis)
        amax = b.abs().amax(dim=-1)                                        # MX-2
        bad = ~torch.isfinite(amax)
        safe = torch.where(bad | (amax == 0), torch.ones_like(amax), amax)
        if scale_mode == "floor":                                          # MX-3
            e = _floor_log2(safe) - f.emax
        else:                                                              # MX-4
            descale = safe * torch.tensor(1.0 / f.max, dtype=torch.float32)
            e = torch.where(descale == 0, torch.full_like(amax, -E8M0_BIAS, dtype=torch.int32),
                            _ceil_log2(descale))                           # underflowed descale
            bad = bad | (e > 127)
        e = torch.clamp(e, -127, 127)
        e = torch.where(amax == 0, torch.full_like(e, -E8M0_BIAS), e)       # MX-5
        scale_bits = torch.where(bad, torch.full_like(e, E8M0_NAN), e + E8M0_BIAS).to(torch.uint8)
        y = (b.double() * torch.pow(2.0, -e.double())[..., None]).float()   # MX-6: exact
        y = torch.where(bad[..., None], torch.full_like(y, NAN), y)
        data = _cast(y, elem_fmt).reshape(*b.shape[:-2], -1).movedim(-1, axis)
        return data, scale_bits.movedim(-1, axis)

    def dequantize_mx(self, data, scale_bits, block_size, axis, out_dtype):
        b = self._blocks(data.double(), block_size, axis)
        s = self.e8m0_to_float(scale_bits.movedim(axis, -1))[..., None]
        return _round_out((b * s).reshape(*b.shape[:-2], -1).movedim(-1, axis), out_dtype)   # MX-8

    def quantize_mx_values(self, x, elem_fmt, block_size, axis, scale_mode):
        data, scale_bits = self.quantize_mx(x, elem_fmt, block_size, axis, scale_mode)
        return self.dequantize_mx(data, scale_bits, block_size, axis, torch.bfloat16)   # MX-10

    def e8m0_to_float(self, scale_bits):
        e = scale_bits.to(torch.int32).double() - E8M0_BIAS
        return torch.where(scale_bits == E8M0_NAN, torch.full_like(e, NAN), torch.pow(2.0, e))

    def float32_to_e8m0_rceil(self, v):
        e = _ceil_log2(torch.where(v > 0, v, torch.ones_like(v)))
        e = torch.where(v > 0, e, torch.full_like(e, -E8M0_BIAS))
        e = torch.clamp(e, min=-E8M0_BIAS)
        bad = ~torch.isfinite(v) | (e > 127)
        return torch.where(bad, torch.full_like(e, E8M0_NAN), e + E8M0_BIAS).to(torch.uint8)

    def float8_to_float64(self, data):
        return data.double()                                               # FMT-7: torch's decode

    # ---- int8 (I8-*) ------------------------------------------------------------------------
    def quantize_int8(self, x, axis, noise, transposed=False):
        x = x.t() if transposed else x                   # noise already comes in x.T's layout
        _check_input(x, "quantize_int8")
        x32 = x.float()
        amax = _amax(x32, (axis,))                                         # I8-1
        ds = torch.maximum(amax / torch.tensor(float(INT8_MAX)),           # I8-2: fp32 division,
                           torch.tensor(EPS_AMAX, dtype=torch.float32))    # floored at EPS32
        inv = torch.tensor(1.0, dtype=torch.float32) / ds                  # I8-3
        y = x32 * inv
        y = torch.round(y) if noise is None else torch.floor(y + noise.float())   # I8-4 / I8-5
        y = torch.clamp(y, -INT8_MAX, INT8_MAX)
        bad = ~torch.isfinite(amax)                                        # I8-6
        y = torch.where(bad.expand_as(y) | torch.isnan(y), torch.zeros_like(y), y)
        ds = torch.where(bad, torch.full_like(ds, NAN), ds)
        return y.to(torch.int8), ds

    def dequantize_int8(self, data, dequant_scale, out_dtype):
        return _round_out(data.double() * dequant_scale.double(), out_dtype)      # I8-8

    def quantize_float8_grouped_t(self, x, offs, align, fmt, pow2_scale, padded_offs=None):
        """F8-7 along axis 0 within each group (RC-13), payload transposed into the padded layout
        of qtrain/grouping.py: group g at columns [padded end of g-1, + its size), zeros around."""
        rows, cols = x.shape
        ends = offs.tolist()
        pad = lambda size: -(-size // align) * align
        width = max(align, -(-(rows + len(ends) * (align - 1)) // align) * align)
        data_t = torch.zeros((cols, width), dtype=getattr(torch, fmt))
        qs = torch.empty((len(ends), cols), dtype=torch.float32)
        start = pstart = 0
        for g, end in enumerate(ends):
            part = x[start:end].float()
            amax = _amax(part, (0,)) if end > start else torch.zeros((1, cols))   # empty: F8-6
            data, q = _float8_scale_and_cast(part, amax, fmt, pow2_scale)
            data_t[:, pstart:pstart + end - start] = data.t()
            qs[g] = q[0]
            pstart += pad(end - start)
            start = end
        return data_t, qs

    def quantize_float8_experts_t(self, w, fmt, pow2_scale):
        """w (E, N, K): amax over N for each (expert, k) (F8-7 within each expert), payload
        written as (E, K, N) = every w[e].T quantized rowwise."""
        amax = _amax(w.float(), (1,))                                      # (E, 1, K)
        data, qs = _float8_scale_and_cast(w.float(), amax, fmt, pow2_scale)
        return data.transpose(1, 2).contiguous(), qs.reshape(w.shape[0], w.shape[2])

    # ---- products (MM-*) --------------------------------------------------------------------
    @staticmethod
    def _expand(d, shape):
        br, bc = shape[0] // d.shape[0], shape[1] // d.shape[1]
        return d.double().repeat_interleave(br, 0).repeat_interleave(bc, 1)

    def scaled_mm_nt(self, a, a_dequant, b, b_dequant, out_dtype, use_fast_accum=False):
        aa = a.double() * self._expand(a_dequant, a.shape)
        bb = b.double() * self._expand(b_dequant, b.shape)
        return _round_out(aa @ bb.T, out_dtype)                                   # MM-2: one rounding

    def scaled_grouped_mm(self, a, a_dequant, b, b_dequant, offs, out_dtype, group_align=1):
        if b.dim() == 2:
            return self._grouped_2d2d(a, a_dequant, b, b_dequant, offs, out_dtype)
        out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64)
        start = 0
        per_row = a_dequant.shape[0] == a.shape[0]
        for g, end in enumerate(offs.tolist()):                            # MM-5
            if end > start:
                da = a_dequant[start:end] if per_row else a_dequant
                aa = a[start:end].double() * self._expand(da, (end - start, a.shape[1]))
                bb = b[g].double() * self._expand(b_dequant[g], b[g].shape)
                out[start:end] = aa @ bb.T
            start = end
        return _round_out(out, out_dtype)

    def _grouped_2d2d(self, a, a_dequant, b, b_dequant, offs, out_dtype):
        """MM-5 2d x 2d: out[g] sums the contraction columns of group g only; factors in block
        form over the whole operand or per group (E, R, 1)."""
        ends = offs.tolist()
        starts = [0] + ends[:-1]

        def full(p, d):
            if d.dim() == 3:                                # per group: column t of g uses d[g]
                f = torch.ones(p.shape, dtype=torch.float64)
                for g, (s, e) in enumerate(zip(starts, ends)):
                    f[:, s:e] = d[g].double()
                return f
            return self._expand(d.reshape(1, 1) if d.dim() == 0 else d, p.shape)

        aa, bb = a.double() * full(a, a_dequant), b.double() * full(b, b_dequant)
        out = torch.zeros(len(ends), a.shape[0], b.shape[0], dtype=torch.float64)
        for g, (s, e) in enumerate(zip(starts, ends)):
            if e > s:
                out[g] = aa[:, s:e] @ bb[:, s:e].T
        return _round_out(out, out_dtype)
