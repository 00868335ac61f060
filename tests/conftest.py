"""Suite-wide settings: offline model hub, marker gating (real_models, netns, containers)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.support.certs import PKI

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One OpenMP thread per test process (set before torch is imported): the tiny models gain nothing
# from more, and on a loaded 2-core machine spinning OpenMP workers make each forward ~10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _real_models_available() -> bool:
    try:
        from common.models.fetch import all_fetched
    except ImportError:
        return False
    return bool(all_fetched())


def _netns_available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("tc") is not None


def _containers_skip_reason() -> str | None:
    from deploy.podman import engine, images

    return engine.missing_reason() or images.base_unavailable_reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    real = _real_models_available()
    netns = _netns_available()
    marked = [i for i in items if i.get_closest_marker("containers") is not None]
    containers = _containers_skip_reason() if marked else None
    for item in items:
        if containers and item in marked:
            item.add_marker(pytest.mark.skip(reason=containers))
        if "real_models" in item.keywords and not real:
            item.add_marker(pytest.mark.skip(reason="real models not fetched: run `make fetch-models`"))
        if "netns" in item.keywords and not netns:
            item.add_marker(pytest.mark.skip(reason="needs root with `ip` and `tc` (iproute2)"))


@pytest.fixture(autouse=True)
def _close_test_sessions() -> Iterator[None]:
    """After each test, close the Session streams it left open (see tests.support.cloud.SyncSession)."""
    yield
    support = sys.modules.get("tests.support.cloud")
    if support is not None:
        support.close_sessions()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A CA with a server (localhost) and a client certificate (the TLS tests)."""
    from tests.support.certs import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """Another CA, unknown to the cloud and the edge."""
    from tests.support.certs import make_pki

    return make_pki(tmp_path_factory.mktemp("other-pki"))
