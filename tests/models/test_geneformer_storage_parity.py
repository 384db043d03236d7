"""Parity with the reference Geneformer tokenizer on every raw-count dataset of ../shared, in every storage users feed.

tests/data/golden/geneformer_storage.npz holds the reference ``TranscriptomeTokenizer`` tokens (V1 and V2) of a few
cells per dataset, for each storage variant of tests/models/geneformer_inputs.py (int32/int64/float32/float64; CSR,
CSC, dense; explicitly stored zeros; obs['n_counts'] in several dtypes; duplicated genes), and the reference
``EmbExtractor`` embeddings of some of them on the tiny random checkpoint (see
tests/data/golden/README_geneformer_storage.md). Tokens must be identical, embeddings within 1e-5.

The reference orders exact ties (stored zeros, equal counts of genes with equal medians) by numpy's non-stable
``argsort``, as this package does on the same values; numpy's AVX-512 sort orders them differently from the sort it
runs elsewhere. The goldens were made on a CPU without AVX-512, so on a CPU with it the token test runs again in a
subprocess with numpy's AVX-512 dispatch disabled (``NPY_DISABLE_CPU_FEATURES``): the same sort as the reference's
run. That this package's ties follow numpy's own argsort on any CPU is tested in test_rank_tokenize_arithmetic.py.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scfmkit as fm

ATOL = 1e-5
DATASETS = ("celltypist", "kang", "pbmc10k", "pbmc5k", "papalexi")


def _avx512_sort_targets() -> list[str]:
    """numpy's AVX-512 dispatch targets that this CPU runs (empty on a CPU without AVX-512)."""
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # numpy < 2
        from numpy.core import _multiarray_umath as umath
    features = umath.__cpu_features__
    return [t for t in umath.__cpu_dispatch__ if ("AVX512" in t or t == "X86_V4") and features.get(t, False)]


AVX512 = [] if os.environ.get("NPY_DISABLE_CPU_FEATURES") else _avx512_sort_targets()


@pytest.fixture(scope="module")
def gfi():
    path = Path(__file__).with_name("geneformer_inputs.py")
    spec = importlib.util.spec_from_file_location("geneformer_inputs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gold(golden_dir):
    with np.load(golden_dir / "geneformer_storage.npz") as f:
        return dict(f)


@pytest.fixture(scope="module", params=["v1", "v2"])
def model(request, gf_v1_dir, gf_v2_dir):
    return request.param, fm.models.load(gf_v1_dir if request.param == "v1" else gf_v2_dir)


@pytest.fixture(scope="module")
def files(shared_dir, gfi):
    import anndata as ad

    cache = {}

    def get(name):
        if name not in cache:
            fname, n = gfi.DATASETS[name]
            cache[name] = ad.read_h5ad(shared_dir / "data" / fname)[:n].copy()
        return cache[name]

    return get


def _cells(gold, name, variant, kind, storages):
    s = int(gold[f"{name}|{variant}|storage_to_set"][storages.index(kind)])
    prefix = f"{name}|{variant}|set{s}"
    lengths = gold[f"{prefix}|lengths"]
    return prefix, np.split(gold[f"{prefix}|input_ids"].astype(np.int64), np.cumsum(lengths)[:-1])


def _assert_tokens(tokens, expected, what):
    assert len(tokens) == len(expected)
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(np.asarray(tokens[i], np.int64), want, err_msg=f"{what}, cell {i}")


@pytest.mark.skipif(not AVX512, reason="numpy runs the same sort as the goldens' run: the test below runs in-process")
def test_tokens_identical_with_the_references_sort():
    """On a CPU with AVX-512: the token test in a subprocess whose numpy sorts as the reference's run did."""
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(AVX512)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    cmd.append(f"{__file__}::test_tokens_identical_in_every_storage")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "skipped" not in out.stdout


@pytest.mark.skipif(bool(AVX512), reason="numpy's AVX-512 sort orders ties unlike the goldens' run: see the test above")
@pytest.mark.parametrize("name", DATASETS)
def test_tokens_identical_in_every_storage(name, model, gold, gfi, files):
    variant, fm_model = model
    storages = [str(s) for s in gold["storages"]]
    cells = gold[f"{name}|cells"]
    for kind in storages:
        adata = gfi.storage_variant(files(name), kind, cells)
        _, expected = _cells(gold, name, variant, kind, storages)
        X_before = adata.X.copy()
        tokens, _ = fm.pp.tokenize(adata, fm_model, gene_key="symbol", gene_id_type="symbol")
        _assert_tokens(tokens, expected, f"{name} {variant} {kind}")
        if "n_counts" not in adata.obs:  # the same with the totals given as the reference is given them
            adata.obs["n_counts"] = np.asarray(adata.X.sum(axis=1)).ravel()
            tokens, _ = fm.pp.tokenize(adata, fm_model, gene_key="symbol", gene_id_type="symbol")
            _assert_tokens(tokens, expected, f"{name} {variant} {kind} with obs['n_counts']")
        X_after = adata.X
        assert type(X_after) is type(X_before)
        assert (X_after != X_before).sum() == 0  # the caller's matrix is untouched


@pytest.mark.parametrize("name", DATASETS)
def test_embeddings_match(name, model, gold):
    """Reference embeddings (emb_layer -1; mean, and cls for V2) of the plain CSR and the stored-zero token sets."""
    variant, fm_model = model
    outputs = [(-1, "mean")] + ([(-1, "cls")] if variant == "v2" else [])
    n_sets = int(gold[f"{name}|{variant}|storage_to_set"].max()) + 1
    checked = 0
    for s in range(n_sets):
        prefix = f"{name}|{variant}|set{s}"
        if f"{prefix}|emb_mean_layer-1" not in gold:
            continue
        n = len(gold[f"{prefix}|emb_mean_layer-1"])
        lengths = gold[f"{prefix}|lengths"][:n]
        ids = gold[f"{prefix}|input_ids"][: int(lengths.sum())]
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        got = fm_model.embed_tokens_multi(
            fm.models.TokenizedCells(ids.astype(np.int32), offsets), outputs=outputs, batch_size=4
        )
        for layer, pooling in outputs:
            np.testing.assert_allclose(
                got[(layer, pooling)],
                gold[f"{prefix}|emb_{pooling}_layer{layer}"],
                atol=ATOL,
                rtol=0,
                err_msg=f"{name} {variant} set {s} {layer} {pooling}",
            )
        checked += 1
    assert checked >= 1


def test_duplicates_warn_and_can_be_summed(model, gold, gfi, files, caplog):
    """Repeated genes: the reference's repeated tokens by default (with a warning naming them), summed on request."""
    variant, fm_model = model
    cells = gold["celltypist|cells"][:4]
    adata = gfi.storage_variant(files("celltypist"), "csr_float32_dup", cells)
    with caplog.at_level(logging.WARNING, logger="scfmkit"):
        tokens, _ = fm.pp.tokenize(adata, fm_model, gene_key="symbol", gene_id_type="symbol")
    assert "repeated tokens" in caplog.text
    dup = adata.var["symbol"].to_numpy()[-6:]
    known = dup[fm_model.match_genes(list(dup), gene_id_type="symbol").column >= 0]  # repeated genes with a token
    assert len(known) > 0
    assert all(s in caplog.text for s in known)
    summed, _ = fm.pp.tokenize(adata, fm_model, gene_key="symbol", gene_id_type="symbol", duplicates="sum")
    plain, _ = fm.pp.tokenize(gfi.storage_variant(files("celltypist"), "csr_float32", cells), fm_model)
    n_repeated = 0
    for i in range(len(cells)):
        assert len(np.unique(summed[i])) == len(summed[i])  # summed: every token once
        assert set(summed[i].tolist()) <= set(plain[i].tolist()) | set(tokens[i].tolist())
        if len(plain[i]) < fm_model.input_size:  # not truncated: the repeats are extra tokens of the same genes
            assert len(summed[i]) == len(plain[i])
            assert set(tokens[i].tolist()) == set(plain[i].tolist()) == set(summed[i].tolist())
            n_repeated += len(tokens[i]) - len(plain[i])
    assert n_repeated > 0
