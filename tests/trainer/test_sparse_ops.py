"""Sparse CSR helpers in trainer.graphs: index dtype, transpose, the product and its gradient, and the
edge-list products (EdgePattern, edge_dot, edge_weighted_sum)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from trainer.graphs import (
    EdgePattern,
    csr_index_dtype,
    csr_transpose,
    edge_dot,
    edge_weighted_sum,
    knn_to_torch_sparse_csr,
    sparse_matmul,
    spmm,
    to_torch_sparse_csr,
)


def _random_csr(n_rows: int = 40, n_columns: int = 25, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.random((n_rows, n_columns)) * (rng.random((n_rows, n_columns)) < 0.15)
    return sp.csr_matrix(dense.astype(np.float32))


def test_index_dtype_is_int32_while_every_index_fits():
    assert csr_index_dtype(10, 10, 100) == torch.int32
    assert csr_index_dtype(2**31 - 1, 5, 2**31 - 1) == torch.int32
    assert csr_index_dtype(5, 2**31, 10) == torch.int64
    assert csr_index_dtype(5, 5, 2**31) == torch.int64


def test_converted_matrices_use_int32_indices_and_keep_their_values():
    matrix = _random_csr()
    tensor = to_torch_sparse_csr(matrix)
    assert tensor.crow_indices().dtype == torch.int32 and tensor.col_indices().dtype == torch.int32
    np.testing.assert_array_equal(tensor.to_dense().numpy(), matrix.toarray())
    knn = knn_to_torch_sparse_csr(torch.tensor([[2, 0], [1, 2], [0, 1]]), torch.tensor([[0.5, 1.0]] * 3), 3)
    assert knn.crow_indices().dtype == torch.int32 and knn.col_indices().dtype == torch.int32
    assert torch.equal(knn.to_dense(), torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.5, 1.0], [0.5, 1.0, 0.0]]))


def test_transpose_matches_the_dense_transpose_and_keeps_the_index_dtype():
    matrix = to_torch_sparse_csr(_random_csr())
    transposed = csr_transpose(matrix)
    assert transposed.shape == (25, 40)
    assert transposed.crow_indices().dtype == torch.int32
    assert torch.equal(transposed.to_dense(), matrix.to_dense().t())


def test_spmm_gives_the_same_floats_as_the_matmul_operator():
    dense = torch.randn(25, 7)
    int32_matrix = to_torch_sparse_csr(_random_csr())
    int64_matrix = torch.sparse_csr_tensor(
        int32_matrix.crow_indices().long(), int32_matrix.col_indices().long(), int32_matrix.values(), (40, 25)
    )
    for matrix in (int32_matrix, int64_matrix):
        for _ in range(3):  # fresh, uninitialised outputs every time: beta = 0 must ignore their contents
            result = spmm(matrix, dense)
            assert result.shape == (40, 7) and torch.equal(result, matrix @ dense)
    torch.testing.assert_close(spmm(int32_matrix, dense), int32_matrix.to_dense() @ dense)


def test_sparse_matmul_gradient_uses_the_transpose():
    matrix = to_torch_sparse_csr(_random_csr())
    dense = torch.randn(25, 3, requires_grad=True)
    weights = torch.randn(40, 3)
    (sparse_matmul(matrix, dense, csr_transpose(matrix)) * weights).sum().backward()
    torch.testing.assert_close(dense.grad, matrix.to_dense().t() @ weights)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_int32_csr_products_and_gradients_on_cuda_match_the_cpu():
    matrix = to_torch_sparse_csr(_random_csr())
    on_cuda = to_torch_sparse_csr(_random_csr(), "cuda")
    assert on_cuda.crow_indices().dtype == torch.int32 and on_cuda.device.type == "cuda"
    dense = torch.randn(25, 3)
    torch.testing.assert_close(spmm(on_cuda, dense.cuda()).cpu(), spmm(matrix, dense))
    dense_cuda = dense.cuda().requires_grad_(True)
    weights = torch.randn(40, 3)
    (sparse_matmul(on_cuda, dense_cuda, csr_transpose(on_cuda)) * weights.cuda()).sum().backward()
    torch.testing.assert_close(dense_cuda.grad.cpu(), matrix.to_dense().t() @ weights)


# ------------------------------------------------------------------------------- edge-list products
def test_edge_products_on_a_hand_checked_graph():
    # edges (0, 1), (0, 2), (2, 0) of a 3 x 3 pattern; row 1 has none
    pattern = EdgePattern(np.array([0, 0, 2]), np.array([1, 2, 0]), (3, 3))
    left = torch.tensor([[1.0, 2.0], [5.0, 5.0], [3.0, -1.0]])
    right = torch.tensor([[1.0, 1.0], [0.0, 2.0], [4.0, 0.5]])
    # <left[0], right[1]> = 4, <left[0], right[2]> = 5, <left[2], right[0]> = 2
    assert torch.equal(edge_dot(pattern, left, right), torch.tensor([4.0, 5.0, 2.0]))
    weights = torch.tensor([0.5, 2.0, 3.0])
    # row 0: 0.5 * right[1] + 2 * right[2]; row 1: nothing; row 2: 3 * right[0]
    expected = torch.tensor([[8.0, 2.0], [0.0, 0.0], [3.0, 3.0]])
    assert torch.equal(edge_weighted_sum(pattern, weights, right), expected)


def _random_pattern(n_rows: int, n_columns: int, n_edges: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    keys = np.unique(np.random.default_rng(seed).integers(0, n_rows * n_columns, n_edges))
    return keys // n_columns, keys % n_columns


def test_edge_products_equal_the_gathered_formulas_and_pass_gradcheck():
    rows, columns = _random_pattern(9, 6, 30, seed=1)
    pattern = EdgePattern(rows, columns, (9, 6))
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(9, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    right = torch.randn(6, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    weights = torch.rand(len(rows), dtype=torch.float64, generator=generator, requires_grad=True)
    r, c = torch.as_tensor(rows), torch.as_tensor(columns)
    torch.testing.assert_close(edge_dot(pattern, left, right), (left[r] * right[c]).sum(-1))
    gathered = torch.zeros(9, 3, dtype=torch.float64).index_add(0, r, weights[:, None] * right[c])
    torch.testing.assert_close(edge_weighted_sum(pattern, weights, right), gathered)
    assert torch.autograd.gradcheck(lambda a, b: edge_dot(pattern, a, b), (left, right))
    assert torch.autograd.gradcheck(lambda w, x: edge_weighted_sum(pattern, w, x), (weights, right))


def test_edge_pattern_rejects_unsorted_repeated_or_out_of_range_edges():
    with pytest.raises(ValueError, match="sorted"):
        EdgePattern(np.array([1, 0]), np.array([0, 0]), (2, 2))
    with pytest.raises(ValueError, match="at most once"):
        EdgePattern(np.array([0, 0]), np.array([1, 1]), (2, 2))
    with pytest.raises(ValueError, match="out of range"):
        EdgePattern(np.array([0, 2]), np.array([0, 0]), (2, 2))
    empty = EdgePattern(np.zeros(0, np.int64), np.zeros(0, np.int64), (2, 3))
    assert edge_dot(empty, torch.ones(2, 4), torch.ones(3, 4)).shape == (0,)
    assert torch.equal(edge_weighted_sum(empty, torch.zeros(0), torch.ones(3, 4)), torch.zeros(2, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_edge_products_and_gradients_on_cuda_match_the_cpu():
    rows, columns = _random_pattern(300, 200, 3000, seed=2)
    pattern = EdgePattern(rows, columns, (300, 200))
    generator = torch.Generator().manual_seed(0)
    left, right = torch.randn(300, 16, generator=generator), torch.randn(200, 16, generator=generator)
    weights = torch.rand(pattern.nnz, generator=generator)

    def run(pattern, left, right, weights):
        left, right, weights = (t.clone().requires_grad_() for t in (left, right, weights))
        (edge_dot(pattern, left, right).sum() + edge_weighted_sum(pattern, weights, right).square().sum()).backward()
        return [t.grad.cpu() for t in (left, right, weights)]

    on_cpu = run(pattern, left, right, weights)
    pattern_cuda = pattern.to("cuda")
    assert pattern_cuda.crow.device.type == "cuda"
    on_cuda = run(pattern_cuda, left.cuda(), right.cuda(), weights.cuda())
    for cpu_grad, cuda_grad in zip(on_cpu, on_cuda, strict=True):
        torch.testing.assert_close(cuda_grad, cpu_grad, rtol=1e-4, atol=1e-4)


def test_bipartite_adjacency_leaves_its_input_alone_and_uses_its_binary_pattern():
    # a float32 CSR passed in (ModelInputs.train_matrix is the dataset's own train matrix) shared its data array
    # with the working copy, whose values were overwritten with ones in place
    from trainer.graphs import bipartite_adjacency, normalized_bipartite_adjacency

    train = sp.csr_matrix(
        (np.array([2.0, 3.0, 0.0, 1.0], np.float32), np.array([0, 1, 2, 1]), np.array([0, 3, 4])), shape=(2, 3)
    )  # user 0: items 0 (weight 2), 1 (weight 3), 2 (a stored zero); user 1: item 1
    before = train.copy()
    adjacency = bipartite_adjacency(train)
    assert np.array_equal(train.data, before.data) and np.array_equal(train.indices, before.indices)
    expected = np.zeros((5, 5), np.float32)
    for user, item in [(0, 0), (0, 1), (1, 1)]:  # the stored zero is no edge
        expected[user, 2 + item] = expected[2 + item, user] = 1.0
    assert np.array_equal(adjacency.toarray(), expected)
    binary = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 0]], np.float32))
    assert np.array_equal(normalized_bipartite_adjacency(train).toarray(), normalized_bipartite_adjacency(binary).toarray())
