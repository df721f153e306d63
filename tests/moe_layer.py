"""A plain reference MoE block for the tests (test code, not library code): router, top-k,
token sort by expert, grouped experts (SwiGLU) through torch._grouped_mm, or a per-group loop
where this torch lacks it. GroupedExperts is the module pattern qtrain.moe recognizes."""
import torch
from torch import nn
import torch.nn.functional as F

HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")


def grouped_linear(x, w, offs):
    """x (M, K) sorted by group, w (E, N, K), offs int32 cumulative ends -> (M, N)."""
    if HAS_GROUPED_MM:
        return torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
    out, start = x.new_zeros((x.shape[0], w.shape[1])), 0
    for g, end in enumerate(offs.tolist()):
        out[start:end] = x[start:end] @ w[g].t()
        start = end
    return out


class GroupedExperts(nn.Module):
    """E SwiGLU experts: w1, w3 (E, H, D), w2 (E, D, H)."""

    def __init__(self, n_experts, dim, hidden):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(n_experts, hidden, dim) * dim ** -0.5)
        self.w3 = nn.Parameter(torch.randn(n_experts, hidden, dim) * dim ** -0.5)
        self.w2 = nn.Parameter(torch.randn(n_experts, dim, hidden) * hidden ** -0.5)

    def forward(self, x, offs):
        h = F.silu(grouped_linear(x, self.w1, offs)) * grouped_linear(x, self.w3, offs)
        return grouped_linear(h, self.w2, offs)


class MoEBlock(nn.Module):
    """Router (hp nn.Linear) -> top-k -> sort tokens by expert -> experts -> weighted combine."""

    def __init__(self, dim=64, hidden=96, n_experts=4, top_k=2):
        super().__init__()
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = GroupedExperts(n_experts, dim, hidden)
        self.n_experts, self.top_k = n_experts, top_k

    def forward(self, x):
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        probs = torch.softmax(self.router(x).float(), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)                  # (T, k)
        flat = experts.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token = order // self.top_k
        counts = torch.bincount(flat, minlength=self.n_experts)
        offs = torch.cumsum(counts, 0).to(torch.int32)
        y = self.experts(x[token], offs) * weights.reshape(-1)[order, None].to(x.dtype)
        out = torch.zeros_like(x).index_add_(0, token, y)
        return out.reshape(*lead, x.shape[-1])
