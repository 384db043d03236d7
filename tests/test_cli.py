"""The ``scfmkit`` command line: outputs, defaults in --help, one-line errors, never overwriting the input."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest

import scfmkit as fm
from scfmkit._cli import main

warnings.filterwarnings("ignore", category=FutureWarning)
if hasattr(md, "set_options"):  # mudata < 0.4
    md.set_options(pull_on_update=False)
else:  # mudata >= 0.4 moved the options to `mudata.settings`
    md.settings.pull_on_update = False

TINY = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "seed": 0}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def gf_dir(shared_dir, tmp_path_factory):
    from scfmkit.models.geneformer import write_random_checkpoint

    return write_random_checkpoint(
        tmp_path_factory.mktemp("cli") / "gf", shared_dir / "models" / "geneformer-v1", **TINY
    )


@pytest.fixture(scope="module")
def files(shared_dir, tmp_path_factory):
    """A 60-cell multiome MuData (.h5mu) and its RNA modality (.h5ad) in a temporary folder."""
    d = tmp_path_factory.mktemp("cli_data")
    mdata = fm.datasets.pbmc_multiome(path=shared_dir / "data")[:60].copy()
    mdata.write_h5mu(d / "multiome.h5mu")
    rna = mdata["rna"].copy()
    rna.layers["counts"] = rna.X.copy()
    rna.write_h5ad(d / "rna.h5ad")
    return d


def _one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("scfmkit: error: ")
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("embed", ["(default: geneformer-v1)", "(default: pretrained)", "(default: rna)", "--overwrite"]),
        ("benchmark-integration", ["--batch-key", "--label-key", "(default: pynndescent)", "(default: 0)"]),
        ("benchmark-perturbation", ["(default: condition)", "(default: control)", "(default: random)"]),
    ],
)
def test_help_shows_defaults(capsys, command, expected):
    assert main([command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # help lines wrap at the terminal width
    for text in expected:
        assert text in out, text


def test_top_level_help_and_python_m():
    proc = subprocess.run([sys.executable, "-m", "scfmkit", "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    for cmd in ("embed", "benchmark-integration", "benchmark-perturbation"):
        assert cmd in proc.stdout


# --------------------------------------------------------------------------------------------------------- embed


def test_embed_h5ad(files, gf_dir, tmp_path):
    inp = files / "rna.h5ad"
    before = _sha(inp)
    out = tmp_path / "out.h5ad"
    assert main(["embed", str(inp), str(out), "--model", str(gf_dir), "--layer", "counts", "--device", "cpu"]) == 0
    assert _sha(inp) == before
    res = ad.read_h5ad(out)
    assert res.obsm["X_geneformer"].shape == (60, 32)
    assert res.uns["geneformer"]["params"]["layer"] == "counts"
    # same numbers as the Python API
    ref = ad.read_h5ad(inp)
    fm.tl.embed(ref, str(gf_dir), layer="counts", device="cpu")
    np.testing.assert_allclose(res.obsm["X_geneformer"], ref.obsm["X_geneformer"], rtol=1e-5, atol=1e-6)


def test_embed_h5mu(files, gf_dir, tmp_path):
    inp = files / "multiome.h5mu"
    out = tmp_path / "out.h5mu"
    assert main(["embed", str(inp), str(out), "--model", str(gf_dir), "--mod", "rna", "--key-added", "X_gf"]) == 0
    res = md.read_h5mu(out)
    assert res["rna"].obsm["X_gf"].shape == (60, 32)
    np.testing.assert_array_equal(res.obsm["rna:X_gf"], res["rna"].obsm["X_gf"])
    src = md.read_h5mu(inp)
    assert (res["atac"].X != src["atac"].X).nnz == 0 and list(res["atac"].obsm) == list(src["atac"].obsm)
    # .h5mu in, .h5ad out: the embedded modality
    out2 = tmp_path / "rna_only.h5ad"
    assert main(["embed", str(inp), str(out2), "--model", str(gf_dir)]) == 0
    assert "X_geneformer" in ad.read_h5ad(out2).obsm


def test_never_overwrites_input_unless_told(files, gf_dir, tmp_path, capsys):
    inp = tmp_path / "copy.h5ad"
    inp.write_bytes((files / "rna.h5ad").read_bytes())
    before = _sha(inp)
    assert main(["embed", str(inp), str(inp), "--model", str(gf_dir)]) == 1
    assert "is the input file" in _one_line_error(capsys.readouterr().err)
    assert _sha(inp) == before
    other = tmp_path / "exists.h5ad"
    other.write_text("keep me")
    assert main(["embed", str(inp), str(other), "--model", str(gf_dir)]) == 1
    assert "exists" in _one_line_error(capsys.readouterr().err)
    assert other.read_text() == "keep me"
    assert main(["embed", str(inp), str(inp), "--model", str(gf_dir), "--overwrite"]) == 0
    assert "X_geneformer" in ad.read_h5ad(inp).obsm


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["embed", "{d}/missing.h5ad", "{t}/o.h5ad"], "does not exist"),
        (["embed", "{d}/rna.h5ad", "{t}/o.csv"], "must end in"),
        (["embed", "{d}/rna.h5ad", "{t}/o.h5ad", "--layer", "nope"], "Layer 'nope' not found"),
        (["embed", "{d}/multiome.h5mu", "{t}/o.h5mu", "--mod", "gex"], "modality 'gex'"),
        (["embed", "{d}/rna.h5ad", "{t}/o.h5ad", "--model", "no-such-model"], "no-such-model"),
        (
            ["benchmark-integration", "{d}/rna.h5ad", "{t}/o.csv", "--batch-key", "b", "--label-key", "l"],
            "batch_key 'b'",
        ),
        (["benchmark-perturbation", "{d}/rna.h5ad", "{t}/o.csv", "--perturbation-key", "nope"], "perturbation_key"),
        (["benchmark-perturbation", "{d}/rna.h5ad", "{t}/o.csv", "--methods", "magic"], "unknown method"),
    ],
)
def test_bad_input_one_line(files, gf_dir, tmp_path, capsys, args, needle):
    argv = [a.format(d=files, t=tmp_path) for a in args]
    if argv[0] == "embed" and "--model" not in argv:
        argv += ["--model", str(gf_dir)]
    assert main(argv) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert needle in line
    assert not list(tmp_path.iterdir())  # no (partial) output


def test_usage_error_one_line_and_debug(files, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "scfmkit", "embed", str(files / "rna.h5ad")], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert "OUT" in _one_line_error(proc.stderr)
    proc = subprocess.run(
        [sys.executable, "-m", "scfmkit", "embed", str(files / "missing.h5ad"), str(tmp_path / "o.h5ad")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    _one_line_error(proc.stderr)
    with pytest.raises(Exception, match="does not exist"):
        main(["embed", str(files / "missing.h5ad"), str(tmp_path / "o.h5ad"), "--debug"])


# ---------------------------------------------------------------------------------------------------- benchmarks


def test_benchmark_integration_passes_options(files, tmp_path, monkeypatch):
    import scfmkit as fm

    seen = {}

    def fake(data, embeddings, **kwargs):
        seen.update(kwargs, embeddings=embeddings, n=data.n_obs)
        return pd.DataFrame(
            {"embedding": ["X_pca"], "metric": ["Total"], "metric_type": ["Aggregate score"], "value": [0.5]}
        )

    monkeypatch.setattr(fm.metrics, "integration", fake)
    out = tmp_path / "scores.csv"
    argv = ["benchmark-integration", str(files / "multiome.h5mu"), str(out), "--batch-key", "b", "--label-key", "l"]
    argv += ["--embeddings", "X_pca", "X_gf", "--n-boot", "3", "--neighbors", "exact", "--seed", "7"]
    assert main(argv) == 0
    assert seen["embeddings"] == ["X_pca", "X_gf"] and seen["n_boot"] == 3 and seen["neighbors"] == "exact"
    assert seen["rng"] == 7 and seen["mod"] == "rna" and seen["baselines"] == ("random", "pca") and seen["n"] == 60
    assert pd.read_csv(out).shape == (1, 4)


def test_benchmark_perturbation(shared_dir, tmp_path):
    inp = shared_dir / "data" / "norman2019_perturbench_subset.h5ad"
    adata = ad.read_h5ad(inp)
    adata = adata[adata.obs["dataset"] == adata.obs["dataset"].iloc[0]].copy()
    small = tmp_path / "norman.h5ad"
    adata.write_h5ad(small)
    out = tmp_path / "bench.csv"
    argv = ["benchmark-perturbation", str(small), str(out), "--methods", "control", "mean", "--seeds", "0", "1"]
    assert main(argv) == 0
    res = pd.read_csv(out)
    assert list(res.columns) == ["method", "seed", "condition", "metric", "value"]
    # the split-half replicate ceiling comes with every benchmark of cells
    assert set(res["method"]) == {"control", "mean", "replicate"} and set(res["seed"]) == {0, 1}
    import scfmkit as fm

    ref = fm.tl.benchmark_perturbation(adata, methods=("control", "mean"), seeds=[0, 1])
    merged = res.merge(ref, on=["method", "seed", "condition", "metric"], suffixes=("", "_api"))
    assert len(merged) == len(ref)
    np.testing.assert_allclose(merged["value"], merged["value_api"], rtol=1e-6, equal_nan=True)
