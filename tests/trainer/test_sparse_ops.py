"""Sparse CSR helpers in trainer.graphs: index dtype, transpose, the product and its gradient."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from trainer.graphs import (
    csr_index_dtype,
    csr_transpose,
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
