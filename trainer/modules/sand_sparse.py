"""Sparse propagation with a precomputed transpose for the backward pass.

``torch.sparse.mm(csr, dense)`` differentiates w.r.t. ``dense`` by transposing the CSR matrix on every
backward call (a COO round trip with a sort). Graph convolutions multiply by the same constant matrix
every batch, so :class:`SparsePropagation` stores its transpose once (or reuses the matrix itself when
it is symmetric, as the normalised user-item adjacency is) and the backward is one more sparse mm.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainer.graphs import csr_transpose, sparse_matmul, spmm


class SparsePropagation(nn.Module):
    """y = A · x for a constant sparse CSR A [n, m] (a non-persistent buffer); x float [m, d] -> [n, d]."""

    def __init__(self, matrix: Tensor, symmetric: bool) -> None:
        super().__init__()
        if matrix.layout != torch.sparse_csr:
            raise ValueError(f"SparsePropagation expects a sparse CSR matrix, got layout {matrix.layout}")
        self.register_buffer("matrix", matrix, persistent=False)
        transpose = matrix if symmetric else csr_transpose(matrix)
        self.register_buffer("matrix_t", transpose, persistent=False)

    def forward(self, dense: Tensor) -> Tensor:
        if not dense.requires_grad:
            return spmm(self.matrix, dense)
        return sparse_matmul(self.matrix, dense, self.matrix_t)
