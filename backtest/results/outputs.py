"""Writing a study's results: merged tables as Parquet and a JSON summary, every file atomically.

The out-of-sample returns of a whole market run to tens of millions of rows, so they are streamed into their
Parquet file chunk by chunk while the small tables are merged in memory.

The merged tables are a pure function of the chunk results, which are a pure function of their cache keys, so
``collect_cached`` keeps them in the cache under a key made of the chunks' keys: a re-run with unchanged inputs
hard-links the files into its output folder instead of re-reading every chunk and re-merging (docs/design.md
section 4: a warm run costs a small fraction of a cold one).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from backtest.atomic import abandoned, atomic_path, json_safe, temporary_for, write_json
from backtest.engine.study import ChunkResult, StudyPlan, StudyResult, combine
from backtest.observe.profiling import wall_timings
from backtest.overfitting import cscv as cscv_module
from backtest.overfitting import snooping as snooping_module
from backtest.results.chunkio import read_chunk
from backtest.results.handoff import ResultHandoff

OOS_SCHEMA = pa.schema(
    [
        ("date", pa.timestamp("ms")),
        ("symbol", pa.dictionary(pa.int32(), pa.string())),
        ("fold", pa.int16()),
        ("ret", pa.float64()),
        ("traded", pa.float64()),
        ("held", pa.float64()),
    ]
)


def read_chunks(paths: Iterable[Path]) -> Iterator[ChunkResult]:
    """Chunk result files decoded one at a time, so only one is in memory.

    Read for ``collect``: each result's out-of-sample rows stay the Arrow table they are in the file, and go
    into the merged file as they are; only the small tables become DataFrames.
    """
    for path in paths:
        yield read_chunk(Path(path), oos_as_arrow=True)


#: how the merged returns are written: encoding them is most of a collect's work. On W, lz4 without a
#: dictionary for the numbers took clearly less CPU than zstd (level 1) with dictionaries for all but the
#: returns, for a slightly larger file; zstd with the same dictionaries as here saved no time. Statistics
#: only where a reader filters (dates, symbols, folds).
_OOS_WRITE: dict[str, Any] = {
    "compression": "lz4",
    "use_dictionary": ["date", "symbol"],
    "write_statistics": ["date", "symbol", "fold"],
}
#: chunks handed to the writer thread and not yet written: the reader stays at most this far ahead
_OOS_IN_FLIGHT = 1


def _oos_batch(rows: pd.DataFrame | pa.Table) -> pa.Table:
    """One chunk's out-of-sample rows in the merged file's schema, NaN written as null in both cases (as
    ``pa.Table.from_pandas`` writes a DataFrame's NaN)."""
    if isinstance(rows, pd.DataFrame):
        return pa.Table.from_pandas(rows, schema=OOS_SCHEMA, preserve_index=False)
    table = rows.cast(OOS_SCHEMA)  # the same columns: only the symbols' index width and nullability change
    for i, f in enumerate(table.schema):
        if pa.types.is_floating(f.type):
            nan = pc.is_nan(table.column(i))
            if pc.any(nan).as_py():
                table = table.set_column(i, f, pc.if_else(nan, pa.scalar(None, f.type), table.column(i)))
    return table


@contextlib.contextmanager
def _oos_writer(path: Path) -> Iterator[Callable[[pd.DataFrame | pa.Table], None]]:
    """A sink for ``combine`` that writes the rows into ``path`` on a thread of its own, in order.

    Compressing the rows is the bulk of a collect and runs outside the GIL, so it overlaps with reading the
    next chunk file and merging the small tables. Whatever happens, every write has ended before the file is
    closed; on an error the file is left for the caller to remove.
    """
    writer = pq.ParquetWriter(path, OOS_SCHEMA, **_OOS_WRITE)
    pending: deque[Future[None]] = deque()

    def sink(rows: pd.DataFrame | pa.Table) -> None:
        pending.append(pool.submit(writer.write_table, _oos_batch(rows)))
        while len(pending) > _OOS_IN_FLIGHT:
            pending.popleft().result()

    with ThreadPoolExecutor(1, thread_name_prefix="oos-writer") as pool:
        try:
            yield sink
            while pending:
                pending.popleft().result()
        finally:
            wait(pending)
            writer.close()


@contextlib.contextmanager
def oos_returns_file(out: Path) -> Iterator[Callable[[pd.DataFrame | pa.Table], None]]:
    """A sink for ``combine`` or ``run_study(oos_sink=...)`` that streams the out-of-sample rows into
    ``out/oos_returns.parquet``; the file appears (atomically) only when the block ends without an error."""
    with atomic_path(out / "oos_returns.parquet") as tmp, _oos_writer(tmp) as sink:
        yield sink


def collect(plan: StudyPlan, chunks: Iterable[ChunkResult], out: Path) -> StudyResult:
    """Merge chunk results into ``out``: oos_returns streamed, the other tables written after the merge."""
    with oos_returns_file(out) as sink:
        result = combine(plan, chunks, oos_sink=sink)
    result.save(out)
    return result


def study_figures(result: StudyResult) -> dict[str, Any]:
    """The headline numbers of a finished study, for summary.json and the artifacts."""
    sel = result.selections
    chosen = sel[sel["basis"] != "skipped"]
    return {
        "symbols_with_results": len(result.symbol_metrics),
        "selections": len(chosen),
        "skipped_symbol_folds": int((sel["basis"] == "skipped").sum()),
        "in_sample_fallbacks": int((sel["basis"] == "in_sample").sum()),
        "mean_in_sample_score": float(chosen["is_score"].mean()) if len(chosen) else None,
        "mean_validation_score": float(chosen["val_score"].mean()) if len(chosen) else None,
        "mean_test_score": float(chosen["test_score"].mean()) if len(chosen) else None,
        "mean_degradation": float(chosen["degradation"].mean()) if len(chosen) else None,
        "portfolio": result.portfolio_metrics,
        "benchmark": result.benchmark_metrics,
        "overfitting": result.overfitting.to_dict(),
        "oos_start": str(result.portfolio["date"].iloc[0].date()) if len(result.portfolio) else None,
        "oos_end": str(result.portfolio["date"].iloc[-1].date()) if len(result.portfolio) else None,
    }


def chunk_row(name: str, r: ChunkResult) -> dict[str, Any]:
    """One chunk's figures for the per-chunk table artifact."""
    m = r.symbol_metrics
    return {
        "chunk": name,
        "symbols": len(r.symbols),
        "with_results": len(m),
        "oos_rows": len(r.oos_returns),
        "mean_sharpe": round(float(m["sharpe"].mean()), 4) if len(m) else None,
        "mean_total_return": round(float(m["total_return"].mean()), 4) if len(m) else None,
        "compute_seconds": round(sum(wall_timings(r.timings).values()), 3),
    }


#: the merged tables of a study, by file stem (what ``StudyResult.save`` and ``collect`` write)
OUTPUT_TABLES: tuple[str, ...] = (
    "selections",
    "oos_returns",
    "oos_metrics",
    "portfolio",
    "grid_scores",
    "trials",
    "cscv",
)
COLLECTED_FORMAT = "backtest.collected/1"
_MANIFEST = "collected.json"


#: the code that decides the merged tables beyond the chunks' own (the chunk keys cover the rest)
_MERGE_MODULES = (
    Path(__file__),
    Path(cscv_module.__file__),
    Path(snooping_module.__file__),
)


def collected_key(chunk_keys: Sequence[str], merge: str = "") -> str:
    """The cache key of a study's merged tables: its chunks' keys in order, the merge-only options
    (``StudyConfig.merge_digest``) and the code that merges them.

    A chunk key already covers the data, configuration, folds and numeric code of its chunk; what this adds is
    the chunk order, the options that only the merge reads (the PBO's blocks) and the modules that decide how
    the merged files are written and what the statistics of luck are.
    """
    digest = hashlib.blake2b(digest_size=20)
    digest.update(COLLECTED_FORMAT.encode() + b"\n")
    for module in _MERGE_MODULES:
        digest.update(module.read_bytes())
    digest.update(merge.encode() + b"\n")
    for key in chunk_keys:
        digest.update(key.encode("utf-8", "surrogatepass") + b"\n")
    return f"collected-{digest.hexdigest()}"


@dataclass(frozen=True)
class Collected:
    """What the flow needs of a collect step: the headline figures, one row per chunk, summed chunk timings."""

    key: str
    reused: bool
    figures: dict[str, Any]
    chunks: list[dict[str, Any]]
    timings: dict[str, float]
    files: dict[str, Path] = field(default_factory=dict)


def _file_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _read_entry(entry: Path, key: str) -> dict[str, Any] | None:
    """The manifest of a complete, untouched cache entry; None for anything else (a miss, never an error).

    Sizes and modification times are checked because the output folders hold hard links to these files: an
    output file rewritten in place (by root, whom read-only modes do not stop) must not be served again.
    """
    try:
        manifest = json.loads((entry / _MANIFEST).read_text())
        if manifest.get("format") != COLLECTED_FORMAT or manifest.get("key") != key:
            return None
        for name, stamp in manifest["files"].items():
            if _file_stamp(entry / name) != stamp:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


def link_into(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src`` (a hard link; a copy across file systems), replacing any older ``dst``.

    The temporary is per process and thread (backtest.atomic), so concurrent links into one folder never collide.
    """
    with atomic_path(dst) as tmp:  # a full disk leaves no half copy behind
        tmp.unlink(missing_ok=True)  # one a killed run of this process id and thread left
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def collect_cached(
    plan: StudyPlan, chunks: Iterable[tuple[str, ChunkResult]], out: Path, cache: Path, key: str
) -> Collected:
    """The merged tables in ``out``: linked from ``cache/<key>`` when there, else merged there first.

    ``chunks`` yields (name, result) in universe order and is consumed only on a miss, so a generator that
    reads chunk files costs nothing on a hit.
    """
    return cached_entry(cache, key, merge_into(plan, chunks), out)


def merge_into(
    plan: StudyPlan, chunks: Iterable[tuple[str, ChunkResult]]
) -> Callable[[Path], dict[str, Any]]:
    """A ``cached_entry`` builder: the chunks merged into its folder, their figures and rows returned."""

    def build(staging: Path) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []

        def results() -> Iterator[ChunkResult]:
            for name, chunk in chunks:
                rows.append(chunk_row(name, chunk))
                yield chunk

        result = collect(plan, results(), staging)
        return {
            "figures": json_safe(study_figures(result)),
            "chunks": json_safe(rows),
            "timings": result.timings,
        }

    return build


def cached_entry(cache: Path, key: str, build: Callable[[Path], dict[str, Any]], out: Path) -> Collected:
    """A study's result files in ``out``: linked from ``cache/<key>`` when there, else made there first by
    ``build(folder)``, which writes the tables (``OUTPUT_TABLES`` or others, as Parquet) into ``folder`` and
    returns the ``figures``, ``chunks`` and ``timings`` to keep beside them.

    Entries are built in a private folder and published with one rename, so concurrent runs of the same study
    never see half an entry; the loser of a race keeps the winner's. Files in the cache are made read-only:
    every output folder links to them.
    """
    entry = cache / key
    manifest = _read_entry(entry, key)
    reused = manifest is not None
    if manifest is None:
        manifest = _build_entry(cache, key, build)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in manifest["files"]:
        link_into(entry / name, out / name)
        files[Path(name).stem] = out / name
    with contextlib.suppress(OSError):
        os.utime(entry / _MANIFEST)  # recently used, for pruning
    return Collected(
        key=key,
        reused=reused,
        figures=manifest["figures"],
        chunks=manifest.get("chunks", []),
        timings=manifest.get("timings", {}),
        files=files,
    )


def _build_entry(cache: Path, key: str, build: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    entry = cache / key
    cache.mkdir(parents=True, exist_ok=True)
    staging = temporary_for(cache / key)
    try:
        staging.mkdir(parents=True, exist_ok=True)
        made = build(staging)
        names = sorted(p.name for p in staging.iterdir() if p.suffix == ".parquet")
        for name in names:
            os.chmod(staging / name, 0o444)
        manifest = {
            "format": COLLECTED_FORMAT,
            "key": key,
            "files": {name: _file_stamp(staging / name) for name in names},
            "figures": made["figures"],
            "chunks": made.get("chunks", []),
            "timings": made.get("timings", {}),
        }
        write_json(staging / _MANIFEST, manifest)
        if entry.exists():  # a broken or stale entry (a complete one was a hit): replace it
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.rename(staging, entry)
        except OSError:
            if _read_entry(entry, key) is None:  # not a concurrent run's complete entry: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def prune_collected(cache: Path, keep: str | None, max_bytes: int, max_age_seconds: float) -> int:
    """Remove cached merged tables unused for ``max_age_seconds``, then the least recently used until the
    rest fit in ``max_bytes``; ``keep`` (the current study's key) stays. Returns how many were removed."""
    if not cache.is_dir():
        return 0
    now = time.time()
    entries = []
    for entry in cache.iterdir():
        if entry.name.startswith("."):
            if abandoned(entry, now):
                shutil.rmtree(entry, ignore_errors=True)  # left by a killed run
            continue
        if not entry.is_dir():
            continue
        try:
            used = (entry / _MANIFEST).stat().st_mtime
        except OSError:
            used = entry.stat().st_mtime
        size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
        entries.append((used, size, entry))
    total = sum(size for _, size, _ in entries)
    removed = 0
    for used, size, entry in sorted(entries):
        if entry.name == keep:
            continue
        if now - used > max_age_seconds or total > max_bytes:
            shutil.rmtree(entry, ignore_errors=True)
            total -= size
            removed += 1
    return removed


class _Abandoned(Exception):
    """A chunk of the study failed: the merged tables of this set of chunks will not be needed."""


class CollectAhead:
    """Builds the cache entry of a study's merged tables while its chunks are still being computed.

    The collect step waits for the last chunk, then reads every chunk file and merges; the bare core merges
    each chunk as it comes off the pool. This does the same for a flow: a background thread reads and merges
    the chunk files in universe order as soon as each one is ``ready``, so when the last chunk finishes
    only its own rows are left to write. The collect step then finds a complete cache entry and links it.

    It is only ahead of the collect step, never in place of it: if a chunk fails it is ``abandon``-ed (nothing
    is published), and if anything else goes wrong the collect step, which always runs, builds the entry
    itself and reports the error. Chunk results never change under their key, so reading a file as soon as
    its chunk finished reads what the collect step would read.

    With ``handoff``, a chunk's result is taken from there when its task (in this process) offered it,
    instead of decoded from its file again (backtest.results.handoff). A result file is named by its
    chunk's cache key, which is the handoff's key.
    """

    def __init__(
        self,
        plan: StudyPlan,
        names: Sequence[str],
        paths: Sequence[Path],
        cache: Path,
        key: str,
        handoff: ResultHandoff | None = None,
    ) -> None:
        self.key = key
        self._ready = [threading.Event() for _ in names]
        self._abandoned = False
        self.error: BaseException | None = None
        self.built = False
        self._thread: threading.Thread | None = None
        self._handoff: ResultHandoff | None = None
        self._keys = [Path(p).name for p in paths]
        if _read_entry(cache / key, key) is None:
            if handoff is not None:
                self._handoff = handoff
                handoff.expect(self._keys)
            self._thread = threading.Thread(
                target=self._run,
                args=(plan, list(names), list(paths), cache),
                name="collect-ahead",
                daemon=True,
            )
            self._thread.start()

    def _chunks(self, names: list[str], paths: list[Path]) -> Iterator[tuple[str, ChunkResult]]:
        for event, name, path in zip(self._ready, names, paths, strict=True):
            event.wait()
            if self._abandoned:
                raise _Abandoned
            handed = self._handoff.take(path.name) if self._handoff is not None else None
            yield name, handed if handed is not None else read_chunk(path, oos_as_arrow=True)

    def _run(self, plan: StudyPlan, names: list[str], paths: list[Path], cache: Path) -> None:
        try:
            _build_entry(cache, self.key, merge_into(plan, self._chunks(names, paths)))
            self.built = True
        except _Abandoned:
            pass
        except BaseException as exc:  # the collect step will meet it again and report it
            self.error = exc

    def ready(self, index: int) -> None:
        """Chunk ``index`` (universe order) has its result file."""
        self._ready[index].set()

    def abandon(self) -> None:
        """A chunk failed (or the flow stopped): publish nothing; the thread ends at its next chunk."""
        self._abandoned = True
        for event in self._ready:
            event.set()

    def wait(self) -> bool:
        """Wait for the entry; True when this built it (False: it existed, or a chunk failed, or an error)."""
        if self._thread is not None:
            self._thread.join()
        if self._handoff is not None:
            self._handoff.forget(self._keys)  # results never taken (a failed chunk's neighbours) go now
            self._handoff = None
        return self.built
