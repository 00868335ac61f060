"""Unit-test fixtures: run codec tests under each big-int backend (gmpy2 and the pure-Python one)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from common.codec import enumerative


@pytest.fixture(scope="module", params=["gmpy2", "python"])
def bigint_backend(request: pytest.FixtureRequest) -> Iterator[enumerative.Ranker]:
    """Make the named backend the default for codecs made inside the test (skip if not importable).

    Module scope: hypothesis refuses function-scoped fixtures, and the swap is cheap to keep.
    """
    name = str(request.param)
    if name not in enumerative.BIGINT_BACKENDS:
        pytest.skip(f"big-int backend {name} is not importable here")
    ranks = enumerative.ranker(name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(enumerative, "DEFAULT", ranks)
        yield ranks
