"""One documented loader per dataset (thin wrappers over :func:`scfmkit.datasets.load`)."""

from __future__ import annotations

from pathlib import Path

from ._registry import load

__all__ = [
    "celltypist_sample",
    "kang2018",
    "kang2018_celltypes",
    "norman2019",
    "papalexi2021",
    "pbmc68k_reduced",
    "pbmc_3batch",
    "pbmc_cite",
    "pbmc_multiome",
]


def norman2019(*, path: str | Path | None = None):
    """Norman 2019 K562 CRISPRa subset from perturbench (5,961 cells x 500 HVG, log-normalised).

    ``obs['condition']`` holds ``control``, ``GENE`` or ``GENE1+GENE2``; also ``dataset``, ``cell_type``,
    ``perturbation_type``.
    """
    return load("norman2019", path=path)


def papalexi2021(*, path: str | Path | None = None):
    """Papalexi 2021 ECCITE-seq CRISPR KO screen in THP-1 cells (20,729 x 299, raw counts; ``obs['target']``)."""
    return load("papalexi2021", path=path)


def kang2018(*, path: str | Path | None = None, backed: str | None = None):
    """Kang 2018 PBMC, control vs IFN-beta (2,000 x 9,015, raw counts; ``obs['condition']``)."""
    return load("kang2018", path=path, backed=backed)


def kang2018_celltypes(*, path: str | Path | None = None):
    """Kang 2018 PBMC with 7 cell types (1,975 x 6,998, log-normalised; ``obs['condition']``, ``obs['cell_type']``)."""
    return load("kang2018_celltypes", path=path)


def pbmc_3batch(*, path: str | Path | None = None):
    """10x PBMC from three chemistries (1,200 x 1,767, log(CP10k+1); ``obs['donor']`` batch, ``obs['cell_type']``)."""
    return load("pbmc_3batch", path=path)


def pbmc_cite(run: str = "10k", *, path: str | Path | None = None):
    """200 cells of a 10x CITE-seq PBMC run (``"10k"`` or ``"5k"``), raw counts.

    ADT counts are in ``obsm['protein_expression']``, their names in ``uns['protein_names']``.
    """
    if run not in {"10k", "5k"}:
        msg = f"`run` must be '10k' or '5k', got {run!r}."
        raise ValueError(msg)
    return load(f"pbmc{run}_cite", path=path)


def pbmc_multiome(*, path: str | Path | None = None):
    """10x Multiome PBMC, 1,000 cells: MuData with ``rna`` (45 genes) and ``atac`` (174 peaks), raw counts."""
    return load("pbmc_multiome", path=path)


def celltypist_sample(*, path: str | Path | None = None, backed: str | None = None):
    """559 10x cells with the full human gene set (raw integer counts, gene symbols as ``var_names``)."""
    return load("celltypist_sample", path=path, backed=backed)


def pbmc68k_reduced():
    """Scanpy's bundled ``pbmc68k_reduced``: 700 cells, ``.raw`` log-normalised, ``obs['bulk_labels']``."""
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()
