"""Test setup: offline tiktoken, the shared data folder, and small fixtures used across files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ledger_support import STORES, FakeClock

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"

# Tests never touch the network: tiktoken reads its encodings from the shared cache.
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))


def _offline_read_file(blobpath: str, _read=None) -> bytes:
    """tiktoken's file reader, refusing downloads: an encoding missing from the cache (o200k_base)
    must take the fallback without a DNS lookup, which pytest-socket does not block."""
    if "://" in blobpath:
        raise ConnectionError(f"tests run offline: not downloading {blobpath}")
    assert _read is not None
    return _read(blobpath)


def _install_offline_tiktoken() -> None:
    import functools

    import tiktoken.load

    if not getattr(tiktoken.load.read_file, "_omniroute_offline", False):
        reader = functools.partial(_offline_read_file, _read=tiktoken.load.read_file)
        reader._omniroute_offline = True  # type: ignore[attr-defined]
        tiktoken.load.read_file = reader


_install_offline_tiktoken()


def _require(path: Path) -> Path:
    """`path`, or a skip when the shared data is absent (a failure under OMNIROUTE_REQUIRE_SHARED=1, as in CI)."""
    if not path.exists():
        reason = (f"../shared/data/{path.name} is missing: the tests that read the shared datasets need "
                  "../shared beside the checkout")
        if os.environ.get("OMNIROUTE_REQUIRE_SHARED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(params=STORES)
def kind(request) -> str:
    """Each ledger store kind in turn (tests/ledger_support.py KINDS), for the tests that take `kind`."""
    return request.param


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test advances it."""
    return FakeClock()


@pytest.fixture(scope="session")
def routerbench_path() -> Path:
    """Path of the shared RouterBench subset."""
    return _require(DATA / "routerbench_subset.parquet")


@pytest.fixture(scope="session")
def llmrouter_paths() -> tuple[Path, Path]:
    """Paths of the LLMRouter dataset and its price table."""
    return _require(DATA / "llmrouter_dcrouter.parquet"), _require(DATA / "llmrouter_dcrouter_prices.json")


@pytest.fixture(scope="session")
def routerbench(routerbench_path):
    """The RouterBench subset, loaded once per test session."""
    from shared_core.data import load_dataset

    return load_dataset(routerbench_path)


@pytest.fixture(scope="session")
def llmrouter(llmrouter_paths):
    """The LLMRouter dataset with its price table, loaded once per test session."""
    from shared_core.data import load_dataset

    data_path, prices = llmrouter_paths
    return load_dataset(data_path, prices=prices)


@pytest.fixture(scope="session")
def train(routerbench):
    """RouterBench's training split."""
    return routerbench.subset("train")


@pytest.fixture(scope="session")
def test_split(routerbench):
    """RouterBench's test split."""
    return routerbench.subset("test")


@pytest.fixture(scope="session")
def train_sample(train):
    """sample(n, seed): n training rows drawn without replacement, small enough to fit fast."""
    import numpy as np

    def sample(n: int, seed: int):
        rows = np.zeros(len(train), dtype=bool)
        rows[np.random.default_rng(seed).choice(len(train), n, replace=False)] = True
        return train.subset(rows)

    return sample


@pytest.fixture(scope="session")
def provider_server():
    """A local OpenAI + Anthropic compatible provider on 127.0.0.1 (tests/provider_server.py), started
    once per session and stopped at the end."""
    from provider_server import ProviderServer

    server = ProviderServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def provider(provider_server):
    """The session's ProviderServer after reset(): no behaviours configured and an empty bill."""
    provider_server.reset()
    return provider_server


@pytest.fixture
def private_redis(tmp_path):
    """Starts redis-servers of the test's own (`private_redis(*args)`), stopped after the test."""
    from ledger_support import PrivateRedis

    servers = []

    def start(*args: str):
        servers.append(PrivateRedis(tmp_path, *args))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
