"""The one tokens type of every model family: ragged per-cell arrays sharing one offsets vector."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TokenizedCells"]


@dataclass
class TokenizedCells:
    """Ragged model input of many cells: cell ``i`` is ``input_ids[offsets[i]:offsets[i + 1]]``.

    Attributes
    ----------
    input_ids
        Token ids of all cells back to back (special tokens included).
    offsets
        ``n_cells + 1`` int64 positions into the per-token arrays.
    values
        Per token: the input value the model sees with it (scGPT's expression bins, ``pad_value`` for ``<cls>``);
        ``None`` for models whose input is the token order only (Geneformer).
    columns
        Per token: the ``adata.var`` position of the gene it stands for, ``-1`` for special tokens; ``None`` when
        the model does not record it.
    n_genes
        Per cell: the number of matched genes with a non-zero value before truncation or subsampling (``None`` when
        not recorded).
    """

    input_ids: np.ndarray
    offsets: np.ndarray
    values: np.ndarray | None = None
    columns: np.ndarray | None = None
    n_genes: np.ndarray | None = None

    @property
    def lengths(self) -> np.ndarray:
        """Number of tokens per cell."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.input_ids[self.offsets[i] : self.offsets[i + 1]]

    def values_of(self, i: int) -> np.ndarray:
        """Input values of cell ``i`` (raises when the model has none)."""
        if self.values is None:
            msg = "These tokens carry no input values (the model reads the token order only)."
            raise ValueError(msg)
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def columns_of(self, i: int) -> np.ndarray:
        """``adata.var`` positions of cell ``i``'s tokens (``-1`` for special tokens)."""
        if self.columns is None:
            msg = "These tokens do not record the var positions of their genes."
            raise ValueError(msg)
        return self.columns[self.offsets[i] : self.offsets[i + 1]]

    @classmethod
    def from_lists(
        cls,
        ids: list[np.ndarray],
        *,
        values: list[np.ndarray] | None = None,
        columns: list[np.ndarray] | None = None,
        n_genes: np.ndarray | None = None,
    ) -> TokenizedCells:
        """Pack per-cell arrays (all of the same lengths) into one :class:`TokenizedCells`."""
        lengths = np.array([len(t) for t in ids], dtype=np.int64)
        offsets = np.zeros(len(ids) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])

        def cat(parts, dtype):
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

        return cls(
            cat(ids, np.int64),
            offsets,
            None if values is None else cat(values, np.float32),
            None if columns is None else cat(columns, np.int64),
            n_genes,
        )

    @classmethod
    def concatenate(cls, parts: list[TokenizedCells]) -> TokenizedCells:
        """Join tokenised chunks in order."""
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(1, np.int64))
        ids = np.concatenate([p.input_ids for p in parts])
        lengths = np.concatenate([p.lengths for p in parts])
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])

        def cat(name):
            arrays = [getattr(p, name) for p in parts]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)

        return cls(ids, offsets, cat("values"), cat("columns"), cat("n_genes"))
