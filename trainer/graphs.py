"""Graph construction as pure functions: user-item adjacency, item kNN graphs, conversions to torch."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


def bipartite_adjacency(train: sp.spmatrix) -> sp.csr_matrix:
    """Symmetric (n_users + n_items)² adjacency [[0, R], [Rᵀ, 0]] from R = train [n_users, n_items]."""
    r = sp.csr_matrix(train, dtype=np.float32)
    r.data[:] = 1.0
    n_users, n_items = r.shape
    upper = sp.hstack([sp.csr_matrix((n_users, n_users), dtype=np.float32), r])
    lower = sp.hstack([r.T, sp.csr_matrix((n_items, n_items), dtype=np.float32)])
    return sp.vstack([upper, lower]).tocsr()


def sym_normalize(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 with row sums as degrees; rows of degree zero stay zero."""
    a = sp.csr_matrix(adjacency, dtype=np.float32)
    degree = np.asarray(a.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    nonzero = degree > 0
    inv_sqrt[nonzero] = degree[nonzero] ** -0.5
    d = sp.diags(inv_sqrt)
    return (d @ a @ d).tocsr().astype(np.float32)


def normalized_bipartite_adjacency(train: sp.spmatrix) -> sp.csr_matrix:
    """LightGCN's propagation matrix: symmetric-normalised user-item bipartite adjacency."""
    return sym_normalize(bipartite_adjacency(train))


def to_torch_sparse(matrix: sp.spmatrix, device: torch.device | str = "cpu") -> Tensor:
    """scipy sparse -> coalesced torch sparse COO float32 tensor on ``device``."""
    coo = sp.coo_matrix(matrix)
    indices = torch.as_tensor(np.vstack([coo.row, coo.col]).astype(np.int64))
    values = torch.as_tensor(coo.data.astype(np.float32))
    tensor = torch.sparse_coo_tensor(indices, values, coo.shape, dtype=torch.float32).coalesce()
    return tensor.to(device)


def to_torch_sparse_csr(matrix: sp.spmatrix, device: torch.device | str = "cpu") -> Tensor:
    """scipy sparse -> torch sparse CSR float32 tensor (fast ``torch.sparse.mm`` on CPU)."""
    csr = sp.csr_matrix(matrix, dtype=np.float32)
    csr.sort_indices()
    return torch.sparse_csr_tensor(
        torch.as_tensor(csr.indptr.astype(np.int64)),
        torch.as_tensor(csr.indices.astype(np.int64)),
        torch.as_tensor(csr.data),
        size=csr.shape,
        dtype=torch.float32,
    ).to(device)
