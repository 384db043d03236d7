"""The Geneformer model keeps its last gene match: a repeat call on the same genes gives the same match, cheaply."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import scfmkit as fm


@pytest.fixture(scope="module")
def models(gf_v1_dir, gf_v2_dir):
    return fm.models.load(gf_v1_dir), fm.models.load(gf_v2_dir)


def _same(a, b) -> None:
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y, f.name


@pytest.mark.parametrize("duplicates", ["reference", "sum"])
def test_cached_match_equals_fresh_match(models, celltypist, duplicates):
    for m in models:
        genes = pd.Index(list(celltypist.var_names[:3000]) + list(celltypist.var_names[:5]))  # repeated symbols
        fresh = m._match_genes(genes, gene_id_type="auto", duplicates=duplicates)
        first = m.match_genes(genes, duplicates=duplicates)
        again = m.match_genes(pd.Index(list(genes)), duplicates=duplicates)  # equal genes, another Index
        _same(first, fresh)
        _same(again, fresh)
        # a caller changing its match does not change the next one
        again.column[:] = -1
        again.gene_ids[0] = "changed"
        _same(m.match_genes(genes, duplicates=duplicates), fresh)
        # other genes or options are matched anew
        other = m.match_genes(genes[:100], duplicates=duplicates)
        _same(other, m._match_genes(genes[:100], gene_id_type="auto", duplicates=duplicates))
        _same(
            m.match_genes(genes, gene_id_type="ensembl"),
            m._match_genes(genes, gene_id_type="ensembl", duplicates="reference"),
        )


def test_replaced_dictionary_is_matched_anew(gf_v1_dir, celltypist):
    m = fm.models.load(gf_v1_dir)
    genes = celltypist.var_names
    before = m.match_genes(genes)
    assert before.n_vars_matched > 0
    m.vocab = dataclasses.replace(m.vocab, name_to_id={})
    with pytest.raises(ValueError, match="gene_name_id_dict"):
        m.match_genes(genes)


def test_replaced_medians_are_used(gf_v1_dir, celltypist):
    """The per-token median table follows a replaced median dictionary (tokens as with those medians)."""
    m = fm.models.load(gf_v1_dir)
    adata = celltypist[:20].copy()
    before, _ = fm.pp.tokenize(adata, m)
    rng = np.random.default_rng(0)
    new = {g: float(v) * rng.uniform(0.1, 10.0) for g, v in m.vocab.medians.items()}
    m.vocab = dataclasses.replace(m.vocab, medians=new)
    match = m.match_adata(adata)
    gene_of = {t: g for g, t in m.vocab.token_dict.items()}
    np.testing.assert_array_equal(m._medians(match), [new[gene_of[t]] for t in match.token_ids])
    after, _ = fm.pp.tokenize(adata, m)
    assert any(not np.array_equal(before[i], after[i]) for i in range(adata.n_obs))
