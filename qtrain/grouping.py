"""Token-group bookkeeping on the device for grouped products (spec/06 MM-5, spec/07 RC-13).

Groups are given by `offs`, int32 (E,) cumulative END indices (MM-5). Kernels need every group
to start at a multiple of an alignment (16 rows for float8, the block size for MX), so the
grouped layer pads each group with zero rows up to that multiple. Everything here is computed
on the device with shapes that depend on (M, E, align) only, never on the values in `offs`:
no host sync, and torch.compile sees static shapes. Zero rows change no amax (F8-1, MX-2) and
add nothing to a product, and the padding rows are dropped again, so padding never changes a
result.

Pure torch; imported by the public layer and by qtrain.fast (a leaf module, like formats).
"""
import torch


def padded_rows(m: int, n_groups: int, align: int) -> int:
    """Static upper bound on the padded length: every group grows by at most align - 1 rows,
    rounded up to a multiple of align (so the padded tensor itself is aligned)."""
    bound = m + n_groups * (align - 1)
    return max(align, -(-bound // align) * align)


def group_bounds(offs: torch.Tensor):
    """(starts, sizes) int64 of each group from the int32 end offsets (MM-5: offs[-1] read 0)."""
    ends = offs.to(torch.int64)
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    return starts, ends - starts


def _padded_layout(offs: torch.Tensor, align: int):
    """(starts, sizes, padded starts, padded ends) int64 per group, each group padded up to a
    multiple of `align`."""
    starts, sizes = group_bounds(offs)
    padded = (sizes + (align - 1)) // align * align
    pends = torch.cumsum(padded, 0)
    return starts, sizes, pends - padded, pends


def padded_offsets(offs: torch.Tensor, align: int) -> torch.Tensor:
    """int32 end offsets of the groups once each is padded up to a multiple of `align`.
    (Six small kernels for a power-of-two align: the grouped layer computes this every step.)"""
    if align & (align - 1) or offs.shape[0] == 0:
        return _padded_layout(offs, align)[3].to(torch.int32)
    sizes = torch.diff(offs, prepend=offs.new_zeros(1))
    return torch.cumsum((sizes + (align - 1)) & -align, 0, dtype=torch.int32)


def pad_index(offs: torch.Tensor, m: int, align: int) -> torch.Tensor:
    """int64 (padded_rows,) source row of every padded row, or m for a zero (padding) row.

    Padded row p lies in the group g whose padded range holds it; its source is
    start[g] + (p - padded_start[g]) when that is still inside group g, else padding."""
    return _pad_index(offs, m, align, _padded_layout(offs, align))


def _pad_index(offs, m, align, layout):
    n_groups = offs.shape[0]
    starts, sizes, pstarts, pends = layout
    p = torch.arange(padded_rows(m, n_groups, align), device=offs.device)
    g = torch.searchsorted(pends, p, right=True)
    gc = g.clamp(max=n_groups - 1)
    local = p - pstarts[gc]
    valid = (g < n_groups) & (local < sizes[gc])
    return torch.where(valid, starts[gc] + local, torch.full_like(p, m))


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index] with index == x.shape[0] giving a zero row (the padding sentinel)."""
    zero = x.new_zeros((1,) + tuple(x.shape[1:]))
    return torch.cat([x, zero]).index_select(0, index)


def pad_groups(x: torch.Tensor, offs: torch.Tensor, align: int):
    """(x_padded (padded_rows, ...), padded_offs int32): each group of rows of x starts at a
    multiple of align, zero rows in between and after; rows of x past offs[-1] are dropped."""
    layout = _padded_layout(offs, align)
    return gather_rows(x, _pad_index(offs, x.shape[0], align, layout)), layout[3].to(torch.int32)


def rows_in_groups(offs: torch.Tensor, m: int, device=None) -> torch.Tensor:
    """bool (m,): row r lies in some group (r < offs[-1]); the others are +0 in a 2d x 3d
    product (MM-5). An empty offs (E = 0) covers nothing."""
    r = torch.arange(m, device=device if device is not None else offs.device)
    if offs.shape[0] == 0:
        return torch.zeros_like(r, dtype=torch.bool)
    return r < offs[-1].to(torch.int64)
