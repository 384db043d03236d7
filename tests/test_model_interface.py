"""Every public pp/tl function that takes a model runs on every registered model family (the interface meta-test).

A new model family registers a :class:`~scfmkit.models.ModelSpec` with ``write_random``, ``vocab_dir`` and ``tiny``;
a new public function that takes ``model`` must get a recipe in ``RECIPES``. Both are checked here, so neither can
be added without being run on everything else.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import scfmkit as fm
from scfmkit.models import FoundationModel, GeneMatch, TokenizedCells
from scfmkit.models._base import _REGISTRY, _ensure_builtin


def _specs():
    _ensure_builtin()
    return sorted({s.name: s for s in _REGISTRY.values()}.values(), key=lambda s: s.name)


SPECS = _specs()


@pytest.fixture(scope="module")
def tiny_models(shared_dir, tmp_path_factory):
    out = {}
    for spec in SPECS:
        assert spec.write_random is not None, f"{spec.name}: ModelSpec.write_random is needed for the meta-test"
        folder = spec.write_random(
            tmp_path_factory.mktemp("ckpt") / spec.name, shared_dir / "models" / spec.vocab_dir, seed=0, **spec.tiny
        )
        out[spec.name] = fm.models.load(folder)
    return out


@pytest.fixture(scope="module")
def cells(shared_dir):
    import anndata as ad

    a = ad.read_h5ad(shared_dir / "data" / "celltypist_sample_counts_559cells.h5ad")[:24].copy()
    a.obs["group"] = np.where(np.arange(a.n_obs) < 12, "a", "b")
    return a


def _reference(cells):
    ref = cells.copy()
    ref.obs["cell_type"] = ref.obs["group"].astype(str)
    return ref


def _top_genes(a, n):
    return a[:, np.sort(np.argsort(-np.asarray(a.X.sum(0)).ravel())[:n])]


# one call of each public function that takes a model; `m` is the loaded model, `a` a fresh copy of the cells
RECIPES = {
    "align_genes": lambda m, a: fm.pp.align_genes(a, m, copy=True),
    "tokenize": lambda m, a: fm.pp.tokenize(a, m),
    "embed": lambda m, a: fm.tl.embed(a, m, batch_size=8, copy=True),
    "embed_genes": lambda m, a: fm.tl.embed_genes(a, m, kind="token", copy=True),
    "map_to_reference": lambda m, a: fm.tl.map_to_reference(
        a, _reference(a), label_key="cell_type", model=m, method="knn", k=3, copy=True
    ),
    "geneformer_perturb": lambda m, a: fm.tl.geneformer_perturb(a, m, genes=["CD74"], n_null=0, copy=True),
    "gene_dependency": lambda m, a: fm.tl.gene_dependency(
        _top_genes(a, 2000),
        m,
        n_genes=2,
        max_cells=8,
        scores=(),
        baselines=("coexpression",),
        batch_size=4,
        inplace=False,
    ),
    "finetune": lambda m, a: _classifier(m, a),
    "annotate": lambda m, a: (clf := _classifier(m, a)) and fm.tl.annotate(_small(a), model=clf, copy=True),
    "benchmark_annotation": lambda m, a: fm.tl.benchmark_annotation(
        _small(a), _small(a), m, label_key="group", methods=["knn_embedding"], seeds=[0], k=3
    ),
}
_CLASSIFIERS: dict[int, object] = {}


def _small(a):
    """8 cells (4 per group) x the 100 genes with the most counts: short sequences, so that training takes seconds."""
    top = np.argsort(-np.asarray(a.X.sum(0)).ravel(), kind="stable")[:100]
    return a[[0, 1, 2, 3, 12, 13, 14, 15]][:, np.sort(top)].copy()


def _classifier(m, a):
    """One fine-tuned classifier per model (1 epoch on 8 cells' `group`), shared by the recipes."""
    from scfmkit.tl._finetune import FAMILY_DEFAULTS

    if m.family not in FAMILY_DEFAULTS:  # a classification head without a fine-tuning recipe: a clear error
        with pytest.raises(TypeError, match="fine-tunes"):
            fm.tl.finetune(_small(a), m, label_key="group", epochs=1, validation=0.0)
        return None
    if id(m) not in _CLASSIFIERS:
        _CLASSIFIERS[id(m)] = fm.tl.finetune(_small(a), m, label_key="group", epochs=1, validation=0.0)
    return _CLASSIFIERS[id(m)]


NEEDS = {
    "geneformer_perturb": "in_silico_perturbation",
    "gene_dependency": "gene_dependency",
    "finetune": "classification",
    "annotate": "classification",
}


def _model_functions():
    for mod in (fm.pp, fm.tl):
        for name in mod.__all__ if hasattr(mod, "__all__") else dir(mod):
            obj = getattr(mod, name)
            if inspect.isfunction(obj) and "model" in inspect.signature(obj).parameters:
                yield name


def test_every_model_function_has_a_recipe():
    assert set(_model_functions()) <= set(RECIPES), "add a RECIPES entry for each public function taking `model`"


def test_every_registered_model_implements_the_interface(tiny_models, cells):
    for name, m in tiny_models.items():
        assert isinstance(m, FoundationModel)
        assert not inspect.isabstract(type(m)), name
        match = m.match_adata(cells)
        assert isinstance(match, GeneMatch) and match.n_vars == cells.n_vars and match.n_vars_matched > 0
        assert set(match.coverage()) >= {"n_vars", "n_vars_matched", "n_genes_matched", "frac_vars_matched"}
        tokens, cov = m.tokenize(cells)
        assert isinstance(tokens, TokenizedCells) and len(tokens) == cells.n_obs
        assert cov["n_vars_matched"] == match.n_vars_matched
        emb, params = m.embed_cells(cells, batch_size=8)
        assert emb.shape == (cells.n_obs, m.hidden_size) and emb.dtype == np.float32
        genes, _ = m.embed_genes(cells, kind="token")
        assert genes.shape == (cells.n_vars, m.hidden_size)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
@pytest.mark.parametrize("func", sorted(RECIPES))
def test_public_function_on_every_model(func, spec, tiny_models, cells):
    model = tiny_models[spec.name]
    a = cells.copy()
    need = NEEDS.get(func)
    if need is not None and need not in model.capabilities:
        with pytest.raises(TypeError, match=f"needs a model with '{need}'"):
            RECIPES[func](model, a)
    else:
        RECIPES[func](model, a)
    # the caller's object is never modified (copy=True or read-only functions)
    assert a.obs.columns.tolist() == cells.obs.columns.tolist()
    assert list(a.obsm) == list(cells.obsm) and list(a.varm) == list(cells.varm) and list(a.uns) == list(cells.uns)
    assert (a.X != cells.X).nnz == 0


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_batch_size_checked_for_every_model(bad, tiny_models, cells):
    for m in tiny_models.values():
        with pytest.raises(ValueError, match="batch_size"):
            m.embed_cells(cells, batch_size=bad)
        with pytest.raises(ValueError, match="batch_size"):
            fm.tl.embed(cells, m, batch_size=bad, copy=True)
        with pytest.raises(ValueError, match="batch_size"):
            m.embed_genes(cells, kind="contextual", batch_size=bad)
    assert "X_geneformer" not in cells.obsm and "X_scgpt" not in cells.obsm
