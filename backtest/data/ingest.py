"""Ingesting a folder of vendor CSV files into the price store, in parallel, idempotently.

Why it works this way:
- Files are read, validated and written as Parquet by worker processes (CSV parsing and hashing are CPU
  bound), while the parent holds the store's writer lock, checks symbol conflicts and commits the catalog.
  Results come back in file-name order, so which of two files claiming the same symbol wins does not depend
  on scheduling: the first by name is ingested, the second is reported as failed.
- A re-run must be cheap and change nothing: a file whose size, mtime and byte fingerprint match the
  catalog is skipped before parsing; one whose bytes changed but whose validated data did not keeps its
  price file (files are content addressed), so only symbols whose data really changed are rewritten.
- A bad file is a reported failure, never an exception that stops the run, and never silently dropped.
- The catalog is committed every few hundred files, so an interrupted ingest keeps what it finished.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from backtest.data.csvformats import file_fingerprint
from backtest.data.store import CatalogEntry, PriceFile, Store, StoreWriter, write_price_file
from backtest.data.validation import Problem, validate_file
from backtest.errors import ConfigError, DataError

__all__ = [
    "SOURCE_SUFFIXES",
    "FileReport",
    "IngestReport",
    "Outcome",
    "ingest_folder",
    "list_source_files",
]

Outcome = Literal["added", "replaced", "unchanged", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("added", "replaced", "unchanged", "failed")
SOURCE_SUFFIXES: frozenset[str] = frozenset({".csv", ".txt"})
_COMMIT_EVERY = 500


@dataclass(frozen=True)
class FileReport:
    """What happened to one source file."""

    file: str
    symbol: str | None
    outcome: Outcome
    rows: int
    rejected_rows: int
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "symbol": self.symbol,
            "outcome": self.outcome,
            "rows": self.rows,
            "rejected_rows": self.rejected_rows,
            "problems": [p.to_dict() for p in self.problems],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class IngestReport:
    """The outcome of one ``ingest_folder`` run, file by file, in file-name order."""

    source: str
    store: str
    workers: int
    elapsed_s: float
    files: tuple[FileReport, ...] = field(default_factory=tuple)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for f in self.files if f.outcome == outcome)

    @property
    def rows(self) -> int:
        """Rows of the files that are in the store after this run (added, replaced or unchanged)."""
        return sum(f.rows for f in self.files if f.outcome != "failed")

    @property
    def rejected_rows(self) -> int:
        return sum(f.rejected_rows for f in self.files)

    @property
    def problems(self) -> tuple[Problem, ...]:
        return tuple(p for f in self.files for p in f.problems)

    @property
    def ok(self) -> bool:
        """At least one file is in the store: the run achieved something usable."""
        return any(f.outcome != "failed" for f in self.files)

    def totals(self) -> dict[str, int]:
        return {
            "files": len(self.files),
            **{outcome: self.count(outcome) for outcome in OUTCOMES},
            "rows": self.rows,
            "rejected_rows": self.rejected_rows,
            "problems": len(self.problems),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "store": self.store,
            "workers": self.workers,
            "elapsed_s": round(self.elapsed_s, 3),
            "totals": self.totals(),
            "files": [f.to_dict() for f in self.files],
        }


@dataclass(frozen=True)
class _Known:
    """What the catalog remembers of a source file: enough to skip it without parsing."""

    symbol: str
    size: int
    mtime_ns: int
    fingerprint: str


@dataclass(frozen=True)
class _Task:
    path: str
    known: _Known | None
    root: str
    durable: bool


@dataclass(frozen=True)
class _Result:
    """What a worker sends back: small metadata, never the price data (already written to the store)."""

    path: str
    name: str
    size: int = 0
    mtime_ns: int = 0
    fingerprint: str = ""
    error: str | None = None
    skipped: bool = False
    symbol: str | None = None
    price_file: PriceFile | None = None
    first_date: dt.date | None = None
    last_date: dt.date | None = None
    rows: int = 0
    rejects: pa.Table | None = None
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = ()
    unlisted_rejects: int = 0

    @property
    def rejected_rows(self) -> int:
        return self.unlisted_rejects + (0 if self.rejects is None else self.rejects.num_rows)


def _process(task: _Task) -> _Result:
    """Read, fingerprint, validate and store one file; every failure becomes a reported error."""
    try:
        return _process_file(task)
    except Exception as exc:  # a bug or an exotic file must cost this file, not the whole run
        return _Result(task.path, Path(task.path).name, error=f"internal error: {type(exc).__name__}: {exc}")


def _process_file(task: _Task) -> _Result:
    path = Path(task.path)
    try:
        st = path.stat()
        size, fingerprint = file_fingerprint(path)
    except OSError as exc:
        return _Result(task.path, path.name, error=f"cannot read file: {exc.strerror or exc}")
    except DataError as exc:
        return _Result(task.path, path.name, error=str(exc))
    base = _Result(task.path, path.name, size=size, mtime_ns=st.st_mtime_ns, fingerprint=fingerprint)
    known = task.known
    if known is not None and (known.size, known.mtime_ns, known.fingerprint) == (
        base.size,
        base.mtime_ns,
        base.fingerprint,
    ):
        return replace(base, skipped=True, symbol=known.symbol)
    try:
        # Streamed block by block: a file of gigabytes costs a block of memory, not its size.
        checked = validate_file(path, fingerprint=base.fingerprint, size=base.size)
    except DataError as exc:
        return replace(base, error=str(exc))
    except OSError as exc:
        return replace(base, error=f"cannot read file: {exc.strerror or exc}")
    rejects = checked.rejects.add_column(
        0, "source_file", pa.array([task.path] * checked.rejects.num_rows, type=pa.string())
    )
    base = replace(
        base, symbol=checked.symbol, rejects=rejects, problems=tuple(checked.problems()), notes=checked.notes
    )
    if checked.rows == 0:
        return replace(
            base,
            error=f"no valid rows: all {checked.rejected_rows} data rows were rejected",
            unlisted_rejects=checked.unlisted_rejects,
        )
    try:
        price_file = write_price_file(Path(task.root), checked.symbol, checked.table, durable=task.durable)
    except OSError as exc:
        return replace(base, error=f"cannot write to the store: {exc}")
    dates = checked.table["date"]
    return replace(
        base,
        price_file=price_file,
        unlisted_rejects=checked.unlisted_rejects,
        first_date=dates[0].as_py(),
        last_date=dates[-1].as_py(),
        rows=checked.rows,
    )


def list_source_files(source: Path) -> list[Path]:
    """The ``*.csv`` / ``*.txt`` files directly in ``source`` (any case), by name; hidden files are skipped
    since they are editors' lock and backup files, not data."""
    return sorted(
        (
            p
            for p in source.iterdir()
            if p.suffix.lower() in SOURCE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        ),
        key=lambda p: p.name,
    )


def _known_sources(entries: Sequence[CatalogEntry]) -> dict[str, _Known]:
    known: dict[str, _Known] = {}
    # When one source file once produced several symbols (its Name column changed), the latest one wins.
    for e in sorted(entries, key=lambda e: e.ingested_at):
        known[e.source_file] = _Known(e.symbol, e.source_size, e.source_mtime_ns, e.source_fingerprint)
    return known


def _worker_context() -> multiprocessing.context.BaseContext:
    """fork when this process has a single thread (fastest, and nothing else to re-import), forkserver when
    other threads run (Prefect's): forking a threaded process can copy a lock some thread holds into the
    child, where nobody will ever release it. forkserver re-imports the main module like spawn does, so
    scripts calling ingest from a thread need the usual ``if __name__ == "__main__":`` guard."""
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["backtest.data.ingest"])
    return context


def _run(tasks: list[_Task], workers: int) -> Iterator[_Result]:
    """Results in task order; a dead worker process fails the files it had not returned, not the run."""
    if workers == 1 or len(tasks) <= 1:
        yield from map(_process, tasks)
        return
    context = _worker_context()
    chunksize = max(1, min(16, len(tasks) // (workers * 8)))
    done = 0
    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
            for result in pool.map(_process, tasks, chunksize=chunksize):
                done += 1
                yield result
    except BrokenProcessPool:
        for task in tasks[done:]:
            yield _Result(
                task.path,
                Path(task.path).name,
                error=(
                    "a worker process died before reading this file (a script that starts an ingest needs "
                    "the `if __name__ == '__main__':` guard); re-run the ingest to retry"
                ),
            )


def _apply(result: _Result, writer: StoreWriter, claimed: dict[str, str], now: dt.datetime) -> FileReport:
    """Turn a worker's result into a catalog change (staged on ``writer``) and the file's report."""
    name = result.name
    if result.error is not None:
        return FileReport(
            name,
            result.symbol,
            "failed",
            0,
            result.rejected_rows,
            (Problem(name, None, result.error), *result.problems),
            result.notes,
        )
    symbol = result.symbol
    assert symbol is not None
    if symbol in claimed:
        reason = f"symbol {symbol!r} was already ingested from {claimed[symbol]} in this run; file skipped"
        return FileReport(name, symbol, "failed", 0, 0, (Problem(name, None, reason),))
    current = writer.entries.get(symbol)
    if result.skipped and current is not None:
        claimed[symbol] = name
        note = f"unchanged since the last ingest ({current.rejected_rows} rejected rows kept in the store)"
        return FileReport(name, symbol, "unchanged", current.rows, current.rejected_rows, (), (note,))
    if result.skipped:
        # The catalog row that matched this file now belongs to another file of the same symbol (possible
        # only if the catalog changed between listing and applying); nothing stored to compare against.
        reason = "the stored entry for this file disappeared during the ingest; re-run the ingest"
        return FileReport(name, symbol, "failed", 0, 0, (Problem(name, None, reason),))

    assert result.price_file is not None and result.first_date is not None and result.last_date is not None
    entry = CatalogEntry(
        symbol=symbol,
        file=result.price_file.file,
        first_date=result.first_date,
        last_date=result.last_date,
        rows=result.rows,
        rejected_rows=result.rejected_rows,
        source_file=result.path,
        source_size=result.size,
        source_mtime_ns=result.mtime_ns,
        source_fingerprint=result.fingerprint,
        data_fingerprint=result.price_file.data_fingerprint,
        ingested_at=now,
    )
    same_source = (
        current is not None
        and current.source_file == result.path
        and current.source_fingerprint == result.fingerprint
    )
    try:
        writer.put(entry, rejects=None if same_source else result.rejects)
    except (DataError, OSError) as exc:
        reason = f"cannot record the symbol in the store: {exc}"
        return FileReport(name, symbol, "failed", 0, result.rejected_rows, (Problem(name, None, reason),))
    claimed[symbol] = name
    outcome: Outcome
    if current is None:
        outcome = "added"
    elif current.data_fingerprint == entry.data_fingerprint:
        outcome = "unchanged"
    else:
        outcome = "replaced"
    return FileReport(name, symbol, outcome, entry.rows, entry.rejected_rows, result.problems, result.notes)


def ingest_folder(
    source: Path | str,
    store: Store,
    workers: int | None = None,
    *,
    durable: bool = True,
    progress: Callable[[FileReport], None] | None = None,
) -> IngestReport:
    """Ingest every ``*.csv`` / ``*.txt`` file directly in ``source`` into ``store``.

    ``workers`` processes read the files (default: one per CPU; 1 runs everything in this process).
    ``durable=False`` skips fsync, for throwaway stores such as tests and benchmarks. ``progress`` is called
    with each file's report as it is applied. Raises DataError only when ``source`` is not a folder; every
    problem with a file is in the report.
    """
    started = time.perf_counter()
    source = Path(source)
    if not source.exists():
        raise DataError(f"source folder {source} does not exist")
    if not source.is_dir():
        raise DataError(f"source {source} is not a folder")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    n_workers = workers or os.cpu_count() or 1
    paths = list_source_files(source)
    now = dt.datetime.now(dt.UTC)
    reports: list[FileReport] = []
    with store.writer(durable=durable) as writer:
        known = _known_sources(list(writer.entries.values()))
        root = str(store.root.absolute())  # workers may not share this process's working directory
        tasks = []
        for path in paths:
            absolute = str(path.resolve())
            tasks.append(_Task(absolute, known.get(absolute), root, durable))
        claimed: dict[str, str] = {}
        for i, result in enumerate(_run(tasks, n_workers), start=1):
            report = _apply(result, writer, claimed, now)
            reports.append(report)
            if progress is not None:
                progress(report)
            if i % _COMMIT_EVERY == 0:
                writer.commit()
    return IngestReport(
        source=str(source),
        store=str(store.root),
        workers=n_workers,
        elapsed_s=time.perf_counter() - started,
        files=tuple(reports),
    )
