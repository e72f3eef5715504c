"""A small decoder-only transformer in the style of nanoGPT (Karpathy), in one readable module.

Pre-LayerNorm blocks, causal ``F.scaled_dot_product_attention`` (its math kernel, switched on per
thread by :func:`math_attention`, in bfloat16 training on a CPU), an exact-GELU MLP (GPT-2's tanh
approximation trains ~8 % slower on CPU), learned positions, the output layer tied to the token
embedding and applied only at the positions a loss or a score needs (``forward(idx,
positions=...)``) - and so is the last block, beyond its keys and values: instruction tuning reads
one or two answer positions per row, and computing nothing else there makes a tuning step ~25 %
cheaper with the same values - weight decay only on matrices.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_choice, check_float, check_int

Positions = tuple[torch.Tensor, torch.Tensor]  # (rows, cols) of the positions an output is needed at
_LOCAL = threading.local()


@contextlib.contextmanager
def math_attention():
    """Attention by PyTorch's math kernel in this thread only. ``sdpa_kernel(SDPBackend.MATH)`` does
    the same with a process-wide switch: two tunings side by side would flip each other's kernel
    (and leave it flipped). The values are bit for bit those of that switch (a test checks)."""
    before = getattr(_LOCAL, "math", False)
    _LOCAL.math = True
    try:
        yield
    finally:
        _LOCAL.math = before


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              causal: bool = False, dropout: float = 0.0) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (boolean ``mask``: True = may attend), or inside
    :func:`math_attention` what it computes with the math backend chosen."""
    if not getattr(_LOCAL, "math", False):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout)
    dev = q.device.type
    if torch.is_autocast_enabled(dev):   # autocast's cast for sdpa, then none inside the kernel
        q, k, v = (t.to(torch.get_autocast_dtype(dev)) for t in (q, k, v))
    if mask is not None:                 # sdpa's conversion of a boolean mask
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
    with torch.autocast(dev, enabled=False):
        return torch.ops.aten._scaled_dot_product_attention_math(q, k, v, mask, dropout, causal)[0]


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 4096
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    gelu: str = "none"      # "none": exact GELU; "tanh": GPT-2's approximation (slower on CPU)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            check_int(name, getattr(self, name), low=1)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        check_float("dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        check_choice("gelu", self.gelu, ("none", "tanh"))

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, positions: Positions | None = None) -> torch.Tensor:
        """Causal attention at every position (``[b, t, c]``), or only at the queries
        ``positions = (rows, cols)`` (``[n, c]``): each attends to the keys of its row up to its column."""
        b, t, c = x.shape
        dropout = self.dropout if self.training else 0.0
        if positions is None:
            q, k, v = self.qkv(x).view(b, t, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)
            y = attention(q, k, v, causal=True, dropout=dropout)
            return self.proj(y.transpose(1, 2).reshape(b, t, c))
        rows, cols = positions
        w, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x[rows, cols], w[:c], bias[:c]).view(-1, self.n_head, 1, c // self.n_head)
        k, v = F.linear(x, w[c:], bias[c:]).view(b, t, 2, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)
        allowed = torch.arange(t, device=x.device) <= cols[:, None]          # [n, t]: causal, per query
        y = attention(q, k[rows], v[rows], allowed[:, None, None], dropout=dropout)
        return self.proj(y.reshape(-1, c))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(approximate=cfg.gelu),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd))

    def forward(self, x: torch.Tensor, positions: Positions | None = None) -> torch.Tensor:
        """``[b, t, c] -> [b, t, c]``, or ``-> [n, c]``: the outputs at ``positions`` only (the
        queries, the residual and the MLP there; keys and values at every position)."""
        x = (x if positions is None else x[positions]) + self.attn(self.ln1(x), positions)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """``forward(idx)`` gives logits at every position; ``forward(idx, positions=(rows, cols))``
    only at those (the vocabulary projection is most of the cost at this size)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head: nn.Parameter | None = None  # tied to wte until untie()
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.shape[1] > self.cfg.block_size:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds block_size={self.cfg.block_size}")
        return self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))

    def hidden(self, idx: torch.Tensor, start: int = 0, x: torch.Tensor | None = None,
               positions: Positions | None = None) -> torch.Tensor:
        """Hidden states after the blocks from ``start`` on (``x``: the input of block ``start``):
        ``[b, t, c]``, or ``[n, c]`` at ``positions = (rows, cols)`` only. The last block then
        computes its queries, residual and MLP at those positions alone - the exact values at a
        fraction of the cost when a loss or a score reads a few positions per row (the answer)."""
        x = self.embed(idx) if x is None else x
        blocks = self.blocks[start:]
        if positions is None or not blocks:
            for block in blocks:
                x = block(x)
            return x if positions is None else x[positions]
        for block in blocks[:-1]:
            x = block(x)
        return blocks[-1](x, positions)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        out = self.lm_head if self.lm_head is not None else self.wte.weight
        return self.ln_f(h) @ out.T

    def untie(self) -> None:
        """Give the output layer its own copy of the token embedding (instruction tuning trains
        the output layer while the input embedding stays frozen with the bottom blocks)."""
        self.lm_head = nn.Parameter(self.wte.weight.detach().clone())

    def forward(self, idx: torch.Tensor, positions: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor:
        return self.head(self.hidden(idx, positions=positions))

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on matrices only (not biases, LayerNorms or embeddings' positions)."""
        decay = [p for n, p in self.named_parameters() if p.dim() >= 2 and p.requires_grad and n != "wpe.weight"]
        rest = [p for n, p in self.named_parameters() if (p.dim() < 2 or n == "wpe.weight") and p.requires_grad]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
