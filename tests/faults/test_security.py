"""Security: nothing read from disk can run code, paths from data stay in their folder, servers stay on
loopback. (Hostile symbols in the store: test_bad_input.py; catalog entries pointing outside:
tests/test_store.py::test_catalog_entries_cannot_point_outside.)"""

from __future__ import annotations

import ast
import base64
import json
import pickle
from pathlib import Path

import psutil
import pytest
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore

from tasks.caching import ChunkFailure, ChunkRecordStorage, ChunkResultSerializer, UnsafeRecord, check_record
from tests.faults.conftest import REPO

PACKAGES = ("backtest", "tasks", "flows")
#: modules that turn bytes into live objects (or code) when loading
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
UNSAFE_CALLS = {"eval", "exec", "read_pickle", "loads_function"}


class Bomb:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_no_code_executing_format_is_loaded_anywhere_in_the_code():
    found = []
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = [a.name for a in node.names] + (
                        [node.module] if isinstance(node, ast.ImportFrom) else []
                    )
                    found += [
                        f"{path}:{node.lineno} imports {n}"
                        for n in names
                        if n and n.split(".")[0] in UNSAFE_MODULES
                    ]
                elif isinstance(node, ast.Call):
                    func = node.func
                    name = (
                        func.id
                        if isinstance(func, ast.Name)
                        else func.attr
                        if isinstance(func, ast.Attribute)
                        else ""
                    )
                    if name in UNSAFE_CALLS:
                        found.append(f"{path}:{node.lineno} calls {name}")
                    if name == "load" and any(k.arg == "allow_pickle" for k in node.keywords):
                        found.append(f"{path}:{node.lineno} calls np.load(allow_pickle=...)")
    assert found == []


def write_record(records: Path, results: Path, key: str, serializer: str, storage_key: Path) -> None:
    record = {"storage_key": str(storage_key), "expiration": None, "serializer": {"type": serializer}}
    (records / key).write_text(json.dumps({**record, "prefect_version": "3", "storage_block_id": None}))


def test_planted_pickle_in_the_cache_is_never_unpickled(tmp_path):
    records, results = tmp_path / "records", tmp_path / "results"
    records.mkdir()
    results.mkdir()
    marker = tmp_path / "pwned"
    (results / "chunk-evil").write_bytes(
        base64.b64encode(pickle.dumps(Bomb(marker)))
    )  # Prefect's pickle format
    write_record(records, results, "chunk-evil", "pickle", results / "chunk-evil")
    (tmp_path / "elsewhere").write_bytes(b"PAR1 not a result")
    write_record(records, results, "chunk-outside", "backtest-chunk-parquet", tmp_path / "elsewhere")

    store = ResultStore(
        result_storage=LocalFileSystem(basepath=str(results)),
        metadata_storage=ChunkRecordStorage(basepath=str(records), results_dir=str(results)),
        serializer=ChunkResultSerializer(),
    )
    # a cache lookup sees no record (so the chunk is recomputed and the record overwritten) ...
    assert not store.exists("chunk-evil") and not store.exists("chunk-outside")
    # ... and reading it anyway refuses before any result byte is decoded
    with pytest.raises(UnsafeRecord, match="names serializer 'pickle'"):
        store.read("chunk-evil")
    with pytest.raises(UnsafeRecord, match="outside the results folder"):
        store.read("chunk-outside")
    assert not marker.exists()
    # the plain Prefect storage would have run it: this is what the guard prevents
    plain = ResultStore(
        result_storage=LocalFileSystem(basepath=str(results)),
        metadata_storage=LocalFileSystem(basepath=str(records)),
    )
    plain.read("chunk-evil")
    assert marker.exists()


def test_chunk_serializer_reads_only_parquet_and_json():
    serializer = ChunkResultSerializer()
    failure = serializer.loads(serializer.dumps(RuntimeError("disk busy")))
    assert isinstance(failure, ChunkFailure) and str(failure) == "RuntimeError: disk busy"
    blob = pickle.dumps({"not": "parquet"})
    stored = serializer.loads(blob)
    with pytest.raises(Exception) as err:  # decoding is Parquet's: a pickle is just invalid bytes to it
        stored.load()
    assert "pickle" not in type(err.value).__module__


def audit_cache(cache: Path) -> None:
    """Every result a study persisted is Parquet behind a record naming our serializer."""
    results = sorted((cache / "results").iterdir())
    assert results
    for path in results:
        assert path.read_bytes()[:4] == b"PAR1", path
        check_record((cache / "records" / path.name).read_bytes(), cache / "results")
    for path in (cache / "prices").iterdir():
        assert path.read_bytes()[:6] in (b"ARROW1", b"PAR1" + path.read_bytes()[4:6]), (
            path
        )  # Arrow IPC or Parquet


def test_servers_listen_on_loopback_only(prefect_server):
    from cli.server import HOST
    from flows.study import make_task_runner

    assert HOST == "127.0.0.1"
    server = psutil.Process(prefect_server.process.pid)
    listening = [
        c.laddr.ip
        for p in [server, *server.children(recursive=True)]
        for c in p.net_connections("inet")
        if c.status == "LISTEN"
    ]
    assert listening and set(listening) == {"127.0.0.1"}
    with make_task_runner("dask", 1):
        me = psutil.Process()
        listening = [
            c.laddr.ip
            for p in [me, *me.children(recursive=True)]
            for c in p.net_connections("inet")
            if c.status == "LISTEN"
        ]
    assert listening and set(listening) == {"127.0.0.1"}, listening
