"""obs columns as string labels: the same result on pandas 2 and 3, missing values never silently turned into text."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scfmkit._labels import obs_strings


@pytest.mark.parametrize(
    "column",
    [
        pd.Series(["a", None, "b", "a"], dtype=object),
        pd.Series(["a", np.nan, "b", "a"], dtype=object),
        pd.Categorical(["a", None, "b", "a"]),
        pd.Series([1.0, np.nan, 2.0, 1.0]),
    ],
    ids=["object-None", "object-nan", "categorical", "float"],
)
def test_missing_raises_with_count_and_fix(column):
    obs = pd.DataFrame({"batch": pd.Series(column).array}, index=list("wxyz"))
    before = obs.copy()
    with pytest.raises(ValueError, match=r"obs\['batch'\] \(the batch_key\) has 1 missing value.*fillna.*notna"):
        obs_strings(obs, "batch", what="batch_key")
    pd.testing.assert_frame_equal(obs, before)


def test_fill_names_missing_values():
    obs = pd.DataFrame({"label": pd.Categorical(["T", None, "B"])}, index=list("abc"))
    out = obs_strings(obs, "label", what="label_key", fill="unlabelled")
    assert out.dtype == object and list(out) == ["T", "unlabelled", "B"]
    assert obs["label"].isna().sum() == 1  # the caller's column is unchanged


def test_no_missing_matches_astype_str():
    obs = pd.DataFrame({"n": [1, 2, 1], "f": [1.5, 2.0, 1.5], "c": pd.Categorical(["x", "y", "x"])})
    for key in obs.columns:
        out = obs_strings(obs, key, what="batch_key")
        assert out.dtype == object
        assert list(out) == [str(v) for v in obs[key]]
        assert all(type(v) is str for v in out)


def test_unknown_column():
    with pytest.raises(KeyError, match="batch_key 'nope' is not an obs column"):
        obs_strings(pd.DataFrame({"a": [1]}), "nope", what="batch_key")
