"""The rank-value kernel against the reference's arithmetic written out with scipy/numpy.

The reference evaluates ``X / n_counts * 10000 / median`` on the matrix it reads (scipy for sparse, numpy for dense),
converts the result to CSR and orders each row's stored values with ``np.argsort(-values)``. These tests write that
expression out directly (every dtype, sparse with stored zeros, dense) on random counts with repeated medians (exact
ties between different genes) and require identical tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from scfmkit.models._rank_tokenize import rank_value_tokenize_counts

N_CELLS, N_GENES = 60, 800


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    counts = rng.negative_binomial(1, 0.3, size=(N_CELLS, N_GENES)) * (rng.random((N_CELLS, N_GENES)) < 0.3)
    medians = rng.choice(rng.gamma(2.0, 1.0, 50), N_GENES)  # few distinct medians: exact ties between genes
    tokens = rng.permutation(N_GENES) + 10
    return counts, medians, tokens


def _expected(X, n_counts, medians, tokens, max_genes):
    normed = sparse.csr_matrix(X / n_counts[:, None] * 10000 / medians)
    return [tokens[normed[i].indices][np.argsort(-normed[i].data)][:max_genes] for i in range(normed.shape[0])]


@pytest.mark.parametrize("x_dtype", ["float32", "float64", "int32", "int64"])
@pytest.mark.parametrize("nc_dtype", ["float32", "float64", "int64"])
@pytest.mark.parametrize("storage", ["csr", "csr_stored_zeros", "dense"])
def test_tokens_equal_the_reference_expression(data, x_dtype, nc_dtype, storage):
    counts, medians, tokens = data
    X = counts.astype(x_dtype)
    if storage != "dense":
        X = sparse.csr_matrix(X)
        if storage == "csr_stored_zeros":
            X.data[::5] = 0  # explicit zeros, still stored
    n_counts = np.asarray(X.sum(axis=1)).ravel().astype(nc_dtype)
    max_genes = 150
    expected = _expected(X, n_counts, medians, tokens, max_genes)
    got, kept, _ = rank_value_tokenize_counts(
        sparse.csr_matrix(X), n_counts, medians, tokens, max_genes=max_genes, divide=storage == "dense"
    )
    for i in range(N_CELLS):
        np.testing.assert_array_equal(got[i], expected[i], err_msg=f"cell {i}")
    if storage == "csr_stored_zeros":
        assert (kept == np.diff(X.indptr)).all()  # every stored entry is ranked, zeros last


def test_repeated_columns_rank_as_separate_entries(data):
    """Two columns on one token column (a duplicated gene the reference does not sum): both are ranked."""
    counts, medians, tokens = data
    X = sparse.csr_matrix(counts[:, :20].astype(np.float32))
    column = np.r_[np.arange(19), 3]  # column 19 shares token column 3
    n_counts = np.asarray(X.sum(axis=1)).ravel()
    got, kept, _ = rank_value_tokenize_counts(X, n_counts, medians[:19], tokens[:19], max_genes=50, column=column)
    expected = _expected(X, n_counts, medians[column], tokens[column], 50)
    for i in range(X.shape[0]):
        np.testing.assert_array_equal(got[i], expected[i])
    assert (kept == np.diff(X.indptr)).all()


def test_negative_zero_ranks_as_a_stored_zero():
    """A stored -0.0 compares equal to 0.0 in numpy's sort: ranked last, not first by its sign bit."""
    X = sparse.csr_matrix(np.array([[3.0, 1.0, 2.0, 5.0, 4.0]], np.float32))
    X.data[1] = -0.0
    n_counts = np.asarray(X.sum(axis=1)).ravel()
    medians, tokens = np.array([1.0, 1.5, 2.5, 3.5, 4.5]), np.arange(5) + 10
    got = rank_value_tokenize_counts(X, n_counts, medians, tokens, max_genes=10)[0]
    np.testing.assert_array_equal(got[0], _expected(X, n_counts, medians, tokens, 10)[0])
    assert got[0][-1] == 11


@pytest.mark.parametrize("fractional", [False, True])
def test_matched_counts_are_the_float64_sum(data, fractional):
    """Per cell, the summed counts of the columns with a token: whole counts summed as integers, others in order."""
    counts, medians, tokens = data
    X = sparse.csr_matrix(counts.astype(np.float32) * (np.float32(0.37) if fractional else np.float32(1)))
    column = np.where(np.arange(N_GENES) % 4 == 0, -1, np.arange(N_GENES))  # every fourth gene without a token
    n_counts = np.asarray(X.sum(axis=1)).ravel()
    _, kept, matched = rank_value_tokenize_counts(X, n_counts, medians, tokens, max_genes=100, column=column)
    for i in range(N_CELLS):
        row = X[i]
        keep = column[row.indices] >= 0
        total = 0.0
        for x in row.data[keep]:
            total += float(x)
        assert matched[i] == total and kept[i] == keep.sum()
