"""Which ``var`` entries become which Geneformer tokens, and when duplicated genes are summed (no AnnData).

The reference tokenizers treat two ``var`` entries with the same Ensembl id differently by version:

- V1 (``TranscriptomeTokenizer`` of the 30M release): no collapsing at all. Every ``var`` entry whose id has a median
  is ranked on its own, so a duplicated id becomes two tokens with the same id (the model then sees a gene twice).
- V2 (gc95M, ``sum_ensembl_ids`` with ``collapse_gene_ids=True``): ids are mapped through the Ensembl mapping
  dictionary (restricted to ids with a token; looked up upper-cased). Counts are summed **only** when that mapping
  merges ids, i.e. when the distinct input ids found in the dictionary outnumber their distinct mapped ids. Then all
  duplicated mapped ids are summed and their columns moved after the others (first-occurrence order); otherwise
  duplicated ids stay repeated tokens, as in V1.

``duplicates="reference"`` follows this exactly (for parity with what the pretrained model saw); ``"sum"`` always
sums the entries of a token (the corrected behaviour).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from ._base import GeneMatch

DUPLICATES = ("reference", "sum")


@dataclass
class GeneformerMatch(GeneMatch):
    """A :class:`GeneMatch` that also says whether ``var`` entries sharing a token are summed.

    Attributes
    ----------
    sum_duplicates
        Whether ``var`` entries that map to the same token are summed into one entry (else each is ranked on its own,
        a repeated token).
    duplicated
        The ids that several ``var`` entries map to.
    """

    sum_duplicates: bool = True
    duplicated: tuple[str, ...] = ()

    def gather(self, X: sparse.csr_matrix) -> sparse.csr_matrix:
        """Cells x token columns: the entries of ``X`` summed per token column (dtype and stored zeros kept)."""
        coo = X.tocoo()
        keep = self.column[coo.col] >= 0
        out = sparse.csr_matrix(
            (coo.data[keep], (coo.row[keep], self.column[coo.col[keep]])),
            shape=(X.shape[0], len(self.token_ids)),
            dtype=X.dtype,
        )
        out.sum_duplicates()
        return out


def match_ids(
    ids: list[str | None],
    token_dict: dict[str, int],
    medians: dict[str, float],
    id_mapping: dict[str, str] | None,
    *,
    special_tokens: bool,
    id_type: str,
    duplicates: str = "reference",
) -> GeneformerMatch:
    """Map Ensembl ids (``None``: no id) of the ``var`` entries onto token columns, as the reference tokenizer.

    ``special_tokens`` selects the V2 logic (mapping dictionary, conditional summing), else V1's. Token columns are
    numbered in the column order of the matrix that the reference ranks (which decides exact ties): ``var`` order,
    except that V2's summed genes come after all others.
    """
    if duplicates not in DUPLICATES:
        msg = f"`duplicates` must be 'reference' or 'sum', got {duplicates!r}."
        raise ValueError(msg)
    collapse = False
    if special_tokens:
        if id_mapping:
            mapping = {k: v for k, v in id_mapping.items() if v in token_dict}
            in_map = [g for g in ids if g is not None and g in mapping]
            collapse = len(set(in_map)) != len({mapping[g] for g in in_map})
            ids = [mapping.get(g.upper()) if g is not None else None for g in ids]
        else:  # the reference's identity mapping over the token dictionary
            ids = [g.upper() if g is not None and g.upper() in token_dict else None for g in ids]
    ok = [g is not None and g in token_dict and g in medians for g in ids]
    counts = Counter(g for g, keep in zip(ids, ok, strict=True) if keep)
    duplicated = [g for g, c in counts.items() if c > 1]
    summed = duplicates == "sum" or collapse
    column = np.full(len(ids), -1, np.int64)
    first: dict[str, int] = {}
    if summed and collapse and duplicated:
        # the reference's layout: genes that occur once in var order, then the summed ones in first-occurrence order
        dup = set(duplicated)
        order = [g for g, keep in zip(ids, ok, strict=True) if keep and g not in dup] + duplicated
        first = {g: k for k, g in enumerate(order)}
        for j, (g, keep) in enumerate(zip(ids, ok, strict=True)):
            if keep:
                column[j] = first[g]
    else:
        for j, (g, keep) in enumerate(zip(ids, ok, strict=True)):
            if keep:
                column[j] = first.setdefault(g, len(first))
    return GeneformerMatch(
        gene_ids=list(ids),
        column=column,
        token_ids=np.array([token_dict[g] for g in first], dtype=np.int64),
        id_type=id_type,
        sum_duplicates=summed,
        duplicated=tuple(duplicated),
    )
