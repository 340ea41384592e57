"""Graph construction as pure functions: user-item adjacency, item kNN graphs, conversions to torch."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


def bipartite_adjacency(train: sp.spmatrix) -> sp.csr_matrix:
    """Symmetric (n_users + n_items)² adjacency [[0, R], [Rᵀ, 0]] from R = train [n_users, n_items].

    R is the binary pattern of ``train`` (stored zeros are no edge, repeated entries one edge); ``train`` itself is
    left as it is (``csr_matrix(train, dtype=float32)`` of a float32 CSR shares its data array).
    """
    r = sp.csr_matrix(train, dtype=np.float32, copy=True)
    r.sum_duplicates()
    r.eliminate_zeros()
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
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return _csr_tensor(csr, device)


def csr_index_dtype(n_rows: int, n_columns: int, nnz: int) -> torch.dtype:
    """int32 for CSR index arrays whenever every index fits (the sparse BLAS kernels take 32-bit indices
    natively; int64 ones are converted to int32 on every product), else int64."""
    return torch.int32 if max(n_rows, n_columns, nnz) < 2**31 else torch.int64


def _csr_tensor(csr: sp.csr_matrix, device: torch.device | str) -> Tensor:
    index_dtype = csr_index_dtype(csr.shape[0], csr.shape[1], csr.nnz)
    return torch.sparse_csr_tensor(
        torch.as_tensor(csr.indptr).to(index_dtype),
        torch.as_tensor(csr.indices).to(index_dtype),
        torch.as_tensor(csr.data),
        size=csr.shape,
        dtype=torch.float32,
    ).to(device)


def csr_transpose(matrix: Tensor) -> Tensor:
    """Transpose of a torch sparse CSR matrix [n, m] -> CSR [m, n], same device and index dtype."""
    transposed = matrix.to_sparse_coo().t().coalesce().to_sparse_csr()
    index_dtype = matrix.crow_indices().dtype
    return torch.sparse_csr_tensor(
        transposed.crow_indices().to(index_dtype),
        transposed.col_indices().to(index_dtype),
        transposed.values(),
        size=transposed.shape,
    )


def spmm(matrix: Tensor, dense: Tensor) -> Tensor:
    """Sparse CSR [N, M] @ dense [M, d] -> new dense [N, d] (no autograd; see :func:`sparse_matmul`).

    The same floats as ``matrix @ dense`` (tested with ``torch.equal``), written by the sparse kernel straight
    into a fresh output (``addmm`` with beta = 0 ignores the uninitialised buffer); ``matrix @ dense`` on the CPU
    first zero-fills a result and copies the kernel's output into it, two extra passes over [N, d] per product.
    Other devices keep ``matrix @ dense`` (not measured there: no GPU was lent when this was written).
    """
    if matrix.device.type != "cpu":
        return matrix @ dense
    out = dense.new_empty((matrix.shape[0], dense.shape[1]))
    return torch.addmm(out, matrix, dense, beta=0, out=out)


def knn_graph(
    features: Tensor,
    k: int,
    exclude_self: bool = True,
    max_chunk_bytes: int = 256 * 2**20,
) -> tuple[Tensor, Tensor]:
    """Top-k cosine-similarity neighbours of every row, in row chunks on ``features``' device.

    Never materialises the [n, n] similarity matrix: each chunk of rows holds at most
    ``max_chunk_bytes`` of similarities ([chunk, n] float32) at a time. Rows of zeros have cosine
    similarity 0 to everything. Callers choose how to binarise or normalise the returned values.

    Args:
        features: float [n, d].
        k: neighbours per row; clipped to the number of candidates (n, or n - 1 with ``exclude_self``).
        exclude_self: drop the row itself from its candidates.
        max_chunk_bytes: memory bound of one chunk's similarity block.

    Returns:
        (neighbours int64 [n, k'], similarities float32 [n, k']), each row sorted by decreasing similarity.
    """
    if features.ndim != 2:
        raise ValueError(f"knn_graph expects features [n, d], got shape {tuple(features.shape)}")
    if k < 1:
        raise ValueError(f"knn_graph needs k >= 1, got {k}")
    n = features.shape[0]
    k = min(k, n - 1 if exclude_self else n)
    if k < 1:
        raise ValueError(f"knn_graph needs at least {2 if exclude_self else 1} rows, got {n}")
    unit = features.float()
    unit = unit / unit.norm(dim=1, keepdim=True).clamp_min(1e-12)
    chunk = max(1, min(n, max_chunk_bytes // (4 * n)))
    neighbours = torch.empty((n, k), dtype=torch.long, device=features.device)
    similarities = torch.empty((n, k), dtype=torch.float32, device=features.device)
    with torch.no_grad():
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            block = unit[start:stop] @ unit.T
            if exclude_self:
                rows = torch.arange(stop - start, device=features.device)
                block[rows, rows + start] = float("-inf")
            values, indices = torch.topk(block, k, dim=1, sorted=True)
            neighbours[start:stop] = indices
            similarities[start:stop] = values
            del block
    return neighbours, similarities


def rows_with_features(features: Tensor) -> Tensor:
    """bool [n]: whether each row of ``features`` [n, d] has a nonzero entry. An all-zero row is an item without
    features in that modality (e.g. a movie without KG facts): cosine 0 to everything, nothing to align."""
    return features.ne(0).any(dim=1)


ITEM_GRAPH_WEIGHT_MODES = ("similarity", "binary", "mean")


def ludp_item_graph_weights(similarities: Tensor, mode: str = "similarity", scale: float = 1.0) -> Tensor:
    """Edge weights [n, k] of LUDP's kNN item graph from the kept similarities [n, k] (row i: item i's neighbours).

    ``similarity`` (the paper's): a_ij = s_ij / sqrt(|N_i|); ``binary``: a_ij = 1 / sqrt(|N_i|); ``mean`` (our
    variant, not the paper's): a_ij = max(s_ij, 0) / sum_j max(s_ij, 0), a similarity-weighted mean of the neighbours
    (each row sums to one, so H keeps the scale of one ID embedding; the paper's rows sum to about 2 for text and 1.3
    for kg on ML-100K). Every weight is then
    multiplied by ``scale``.

    |N_i| is the number of neighbours kept in row i (the row length of ``similarities``), so that
    h_i^(l+1) = sum_j a_ij h_j^(l) is the paper's sum over N_i scaled by 1 / sqrt(|N_i|), with the kept
    similarity values weighting the neighbours.

    A row whose similarities are all 0 (an item with all-zero features, e.g. no KG facts) has no neighbours: top-k
    picked its k "neighbours" by tie order alone, so its edges get weight 0 in every mode.
    """
    if similarities.ndim != 2:
        raise ValueError(f"expected similarities [n, k], got shape {tuple(similarities.shape)}")
    if mode not in ITEM_GRAPH_WEIGHT_MODES:
        raise ValueError(f"item graph weights must be one of {ITEM_GRAPH_WEIGHT_MODES}, got {mode!r}")
    if mode == "mean":
        positive = similarities.clamp_min(0)
        total = positive.sum(dim=1, keepdim=True)
        weights = torch.where(total > 0, positive / total.clamp_min(1e-12), torch.zeros_like(positive))
    elif mode == "binary":
        has_neighbours = (similarities != 0).any(dim=1, keepdim=True)
        weights = torch.where(has_neighbours, similarities.shape[1] ** -0.5, 0.0).to(similarities.dtype)
        weights = weights.expand_as(similarities).contiguous()
    else:
        weights = similarities * similarities.shape[1] ** -0.5
    return weights if scale == 1.0 else weights * scale


def knn_to_torch_sparse_csr(neighbours: Tensor, weights: Tensor, n_columns: int) -> Tensor:
    """[n, k] neighbour indices and edge weights -> torch sparse CSR [n, n_columns] on their device."""
    if neighbours.shape != weights.shape or neighbours.ndim != 2:
        raise ValueError(
            f"neighbours and weights must both be [n, k]; got {tuple(neighbours.shape)} and {tuple(weights.shape)}"
        )
    n, k = neighbours.shape
    order = torch.argsort(neighbours, dim=1)
    columns = torch.gather(neighbours, 1, order)
    values = torch.gather(weights.float(), 1, order)
    index_dtype = csr_index_dtype(n, n_columns, n * k)
    crow = torch.arange(0, n * k + 1, k, dtype=index_dtype, device=neighbours.device)
    return torch.sparse_csr_tensor(
        crow, columns.reshape(-1).to(index_dtype), values.reshape(-1), size=(n, n_columns), dtype=torch.float32
    )


class _SparseDenseMatmul(torch.autograd.Function):
    """y = A @ x with the backward pass using a precomputed Aᵀ (torch's own CSR backward is slow on CPU)."""

    @staticmethod
    def forward(ctx, matrix: Tensor, matrix_t: Tensor, dense: Tensor) -> Tensor:  # type: ignore[override]
        ctx.matrix_t = matrix_t
        return spmm(matrix, dense)

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        return None, None, spmm(ctx.matrix_t, grad_output.contiguous())


def sparse_matmul(matrix: Tensor, dense: Tensor, matrix_t: Tensor | None = None) -> Tensor:
    """Sparse [N, M] @ dense [M, d] -> [N, d], differentiable in ``dense``.

    ``matrix_t`` is the transpose (pass it for non-symmetric matrices); by default the matrix is
    assumed symmetric, as the normalised bipartite adjacency is.
    """
    return _SparseDenseMatmul.apply(matrix, matrix if matrix_t is None else matrix_t, dense)


class EdgePattern(torch.nn.Module):
    """The sparsity pattern of an edge list, kept as CSR [n_rows, n_columns] and as its transpose, so that
    per-edge products (:func:`edge_dot`, :func:`edge_weighted_sum`) run as sparse kernels without ever
    forming an [E, d] tensor of gathered rows (and without autograd saving one).

    Edges must be sorted by (row, column) without repeats (torch's CPU ``sampled_addmm`` rejects a row that
    names a column twice; merge such edges by adding their values first). Edge values handed to the
    products are in this order. The index tensors are non-persistent buffers, so they follow the owning
    model across devices and stay out of its state dict.

    Args:
        rows, columns: int [E] edge endpoints, rows in ``[0, n_rows)``, columns in ``[0, n_columns)``.
        shape: (n_rows, n_columns).

    Raises:
        ValueError: indices out of range, arrays of different lengths, or edges not strictly sorted by
            (row, column).
    """

    def __init__(self, rows: np.ndarray, columns: np.ndarray, shape: tuple[int, int]) -> None:
        super().__init__()
        rows, columns = np.asarray(rows, dtype=np.int64), np.asarray(columns, dtype=np.int64)
        n_rows, n_columns = int(shape[0]), int(shape[1])
        if rows.shape != columns.shape or rows.ndim != 1:
            raise ValueError(f"rows and columns must be 1-D of equal length, got {rows.shape}, {columns.shape}")
        if len(rows) and (rows.min() < 0 or rows.max() >= n_rows or columns.min() < 0 or columns.max() >= n_columns):
            raise ValueError(f"edge indices out of range for shape {(n_rows, n_columns)}")
        row_step, column_step = np.diff(rows), np.diff(columns)
        if ((row_step < 0) | ((row_step == 0) & (column_step <= 0))).any():
            raise ValueError("edges must be sorted by (row, column), each pair at most once")
        self.shape = (n_rows, n_columns)
        self.nnz = len(rows)
        index_dtype = csr_index_dtype(n_rows, n_columns, self.nnz)
        transpose_order = np.lexsort((rows, columns))  # sorted by (column, row)

        def buffer(name: str, array: np.ndarray, dtype: torch.dtype) -> None:
            self.register_buffer(name, torch.as_tensor(array).to(dtype), persistent=False)

        buffer("crow", np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_rows))]), index_dtype)
        buffer("columns", columns, index_dtype)
        buffer("crow_t", np.concatenate([[0], np.cumsum(np.bincount(columns, minlength=n_columns))]), index_dtype)
        buffer("columns_t", rows[transpose_order], index_dtype)
        buffer("transpose_order", transpose_order, torch.long)

    def matrix(self, values: Tensor) -> Tensor:
        """Sparse CSR [n_rows, n_columns] with ``values`` float [E] (in edge order) at the edges."""
        return _csr_from_parts(self.crow, self.columns, values, self.shape)

    def transposed(self, values: Tensor) -> Tensor:
        """Sparse CSR [n_columns, n_rows]: the transpose of ``matrix(values)``."""
        values = values.index_select(0, self.transpose_order)
        return _csr_from_parts(self.crow_t, self.columns_t, values, (self.shape[1], self.shape[0]))


def _csr_from_parts(crow: Tensor, columns: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # torch's "sparse CSR support is in beta" notice
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return torch.sparse_csr_tensor(crow, columns, values, size=shape, check_invariants=False)


def _sampled_dot(pattern: EdgePattern, left: Tensor, right: Tensor) -> Tensor:
    if pattern.nnz == 0:
        return left.new_zeros(0)
    mask = pattern.matrix(left.new_zeros(pattern.nnz))
    return torch.sparse.sampled_addmm(mask, left.contiguous(), right.contiguous().t(), beta=0.0).values()


class _EdgeDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pattern: EdgePattern, left: Tensor, right: Tensor) -> Tensor:  # type: ignore[override]
        ctx.pattern = pattern
        ctx.save_for_backward(left, right)
        return _sampled_dot(pattern, left, right)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        left, right = ctx.saved_tensors
        pattern, grad = ctx.pattern, grad.contiguous()
        grad_left = spmm(pattern.matrix(grad), right) if ctx.needs_input_grad[1] else None
        grad_right = spmm(pattern.transposed(grad), left) if ctx.needs_input_grad[2] else None
        return None, grad_left, grad_right


class _EdgeWeightedSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pattern: EdgePattern, weights: Tensor, dense: Tensor) -> Tensor:  # type: ignore[override]
        ctx.pattern = pattern
        ctx.save_for_backward(weights, dense)
        return spmm(pattern.matrix(weights), dense.contiguous())

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        weights, dense = ctx.saved_tensors
        pattern, grad = ctx.pattern, grad.contiguous()
        grad_weights = _sampled_dot(pattern, grad, dense) if ctx.needs_input_grad[1] else None
        grad_dense = spmm(pattern.transposed(weights), grad) if ctx.needs_input_grad[2] else None
        return None, grad_weights, grad_dense


def edge_dot(pattern: EdgePattern, left: Tensor, right: Tensor) -> Tensor:
    """⟨left[row_e], right[column_e]⟩ for every edge e, float [E] in edge order; differentiable.

    Args:
        left: float [n_rows, d]; right: float [n_columns, d].
    """
    return _EdgeDot.apply(pattern, left, right)


def edge_weighted_sum(pattern: EdgePattern, weights: Tensor, dense: Tensor) -> Tensor:
    """out[r] = Σ over the edges e of row r of weights[e] · dense[column_e], float [n_rows, d]; differentiable
    in both ``weights`` (float [E], edge order) and ``dense`` (float [n_columns, d])."""
    return _EdgeWeightedSum.apply(pattern, weights, dense)
