"""qtrain.fast: Triton kernels and torch scaled products for GPUs (spec/ is the contract)."""
