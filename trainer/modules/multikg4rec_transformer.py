"""Multi-KG4Rec's Bi-Transformer: per-modality transformer blocks plus cross-modal multi-head attention.

Every modality has a sequence of token vectors (one per BFS neighbour of an item). One block applies,
per modality, self-attention + residual + LayerNorm + FFN (post-LN), and then cross attention whose
queries are that modality's tokens and whose keys/values concatenate the tokens of its *source*
modalities along the sequence axis, again with residual + LayerNorm + FFN. With every modality as a
source of every other this is the paper's bi-directional fusion; ``a->b`` lets only ``b`` read ``a``.

Attention is written with plain matmul/softmax so that it exports to ONNX unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class MultiHeadAttention(nn.Module):
    """Scaled dot-product multi-head attention; queries [B, n_q, d], keys/values [B, n_k, d] -> [B, n_q, d]"""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"embedding size {dim} is not divisible by the number of heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, queries: Tensor, keys_values: Tensor, key_padding: Tensor | None = None) -> Tensor:
        """``key_padding``: bool [B, n_k], True where the key is padding (never attended to)."""
        q = self._split(self.query(queries))
        k, v = self._split(self.key(keys_values)), self._split(self.value(keys_values))
        if torch.onnx.is_in_onnx_export():  # the same computation, spelled with ops every opset has
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # [B, h, n_q, n_k]
            if key_padding is not None:
                scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
            mixed = torch.softmax(scores, dim=-1) @ v
        else:  # fused kernel: many tiny per-head matmuls are slow as separate batched matmuls on CPU
            mask = None if key_padding is None else ~key_padding[:, None, None, :]
            dropout = self.dropout.p if self.training else 0.0
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.output(mixed.transpose(1, 2).reshape(queries.shape))


class AttentionSublayer(nn.Module):
    """Post-LN transformer sublayer: x = LN(x + MHA(x, kv)); x = LN(x + FFN(x))."""

    def __init__(self, dim: int, n_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(dim, n_heads, dropout)
        self.norm_attention = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.norm_feed_forward = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, keys_values: Tensor, key_padding: Tensor | None = None) -> Tensor:
        x = self.norm_attention(x + self.dropout(self.attention(x, keys_values, key_padding)))
        return self.norm_feed_forward(x + self.dropout(self.feed_forward(x)))


class BiTransformerBlock(nn.Module):
    """Per-modality self-attention, then cross attention over the concatenated source modalities."""

    def __init__(
        self,
        n_modalities: int,
        sources: list[list[int]],
        dim: int,
        n_heads: int,
        ffn_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.sources = sources
        self.self_attention = nn.ModuleList(
            AttentionSublayer(dim, n_heads, ffn_dim, dropout) for _ in range(n_modalities)
        )
        self.cross_attention = nn.ModuleList(
            AttentionSublayer(dim, n_heads, ffn_dim, dropout) for _ in range(n_modalities)
        )

    def forward(self, tokens: list[Tensor], padding: Tensor | None) -> list[Tensor]:
        attended = [layer(x, x, padding) for layer, x in zip(self.self_attention, tokens, strict=True)]
        outputs = []
        for m, layer in enumerate(self.cross_attention):
            keys_values = torch.cat([attended[s] for s in self.sources[m]], dim=1)
            key_padding = None if padding is None else torch.cat([padding] * len(self.sources[m]), dim=1)
            outputs.append(layer(attended[m], keys_values, key_padding))
        return outputs


class BiTransformer(nn.Module):
    """A stack of :class:`BiTransformerBlock`.

    Args:
        sources: for each modality (by position), the positions of the modalities whose tokens form its
            cross-attention keys/values (always including itself).
    """

    def __init__(
        self,
        sources: list[list[int]],
        dim: int,
        n_blocks: int = 3,
        n_heads: int = 8,
        ffn_dim: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        for m, own in enumerate(sources):
            if m not in own:
                raise ValueError(f"modality {m}'s cross-attention sources {own} must include itself")
        self.blocks = nn.ModuleList(
            BiTransformerBlock(len(sources), sources, dim, n_heads, ffn_dim, dropout) for _ in range(n_blocks)
        )

    def forward(self, tokens: list[Tensor], padding: Tensor | None = None) -> list[Tensor]:
        """tokens: per modality [B, n, d]; padding: bool [B, n], True = padded -> per modality [B, n, d]"""
        for block in self.blocks:
            tokens = block(tokens, padding)
        return tokens


def leaky_projection(in_dim: int, out_dim: int) -> nn.Module:
    """The paper's feature reduction: Linear then LeakyReLU."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.LeakyReLU(0.2))
