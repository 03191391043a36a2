"""Loading prices from SQLite, PostgreSQL and the Parquet store, measured side by side in one run.

    python benchmarks/db_load.py                      # 1,000 symbols x 20 years (from W's store)
    python benchmarks/db_load.py --symbols 200        # a quick run
    python benchmarks/db_load.py --pg-url postgresql+psycopg://user:pw@host/db   # an existing server

1. the first N symbols of the synthetic W store (``benchmarks/.data``, built when missing) are written into a
   fresh SQLite file and a fresh PostgreSQL database (a throwaway server from Debian's postgresql package
   on 127.0.0.1, default durability, unless ``--pg-url`` is given): rows per second of the sink
   (``backtest.db.prices.sync_prices``: executemany on SQLite, COPY on PostgreSQL);
2. a cold chunk load, as the flow's load step does on a cache miss: each source object is created anew
   (no catalog or connection cached), then every symbol is loaded in chunks of ``--chunk`` symbols up to
   the last date. Best of ``--repeat`` passes; the OS page cache is warm for all three sources alike.

3. with ``--results DIR`` (a flow's ``<store>/cache/results`` folder), the persist step on those chunk results:
   seconds for selections + metrics alone (the default) and with every out-of-sample return
   (``--persist-oos``), one transaction per chunk, into a fresh SQLite file.

Prints rows per second for each source and the SQLite / Parquet time ratio (goal: <= 5x), checks that
every source returns identical panels, and writes ``benchmarks/results/db_load-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.standalone import (
    W_SEED,
    W_SYMBOLS,
    W_YEARS,
    describe_machine,
    ensure_store,
    machine_line,
    write_results,
)


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str | None]:
    """The given URL, or a database on a throwaway server (None when PostgreSQL cannot run here)."""
    if url:
        yield url
        return
    from backtest.db.pgtemp import PgUnavailable, temporary_postgres

    try:
        with temporary_postgres(durable=True) as server:
            yield server.create_database()
    except PgUnavailable as exc:
        print(f"PostgreSQL skipped: {exc}")
        yield None


def timed_load(
    make_source: Callable[[], Any], symbols: list[str], chunk: int, last: Any
) -> tuple[float, list[Any]]:
    t0 = time.perf_counter()
    source = make_source()
    panels = [source.load(symbols[i : i + chunk], end=last) for i in range(0, len(symbols), chunk)]
    return time.perf_counter() - t0, panels


def same_panels(a: list[Any], b: list[Any]) -> bool:
    import numpy as np

    return all(
        x.symbols == y.symbols
        and np.array_equal(x.dates, y.dates)
        and all(
            np.array_equal(getattr(x, f), getattr(y, f), equal_nan=True) for f in ("open", "close", "volume")
        )
        for x, y in zip(a, b, strict=True)
    )


def persist_step(folder: Path) -> dict[str, Any]:
    """Seconds of ``persist_run`` over the chunk result files of ``folder``, without and with oos returns.

    Files whose symbols overlap an earlier file's (results of another study in the same cache) are left out.
    """
    import datetime as dt
    import json

    import pyarrow.parquet as pq

    from backtest.db.results import ChunkRecord, persist_run

    records, seen = [], set()
    for i, path in enumerate(sorted(p for p in folder.iterdir() if p.name.startswith("chunk-"))):
        symbols = tuple(json.loads(pq.read_schema(path).metadata[b"backtest"])["symbols"])
        if seen.isdisjoint(symbols):
            seen.update(symbols)
            records.append(ChunkRecord(i, path.name, symbols, "Completed", None, str(path)))
    out: dict[str, Any] = {"chunks": len(records), "symbols": len(seen)}
    for include_oos in (False, True):
        with tempfile.TemporaryDirectory(prefix="db-persist-") as tmp:
            report = persist_run(
                f"sqlite:///{Path(tmp) / 'results.db'}",
                flow_run_id=None,
                strategy="bench",
                config={},
                price_source="bench",
                started_at=dt.datetime.now(dt.UTC),
                chunks=records,
                state="Completed",
                summary={},
                include_oos=include_oos,
            )
        rows = report.selections + report.metrics + report.oos_rows
        key = "with_oos" if include_oos else "default"
        out[key] = {**report.to_dict(), "rows_per_s": rows / report.seconds}
        print(
            f"persist {key:<9} {len(records)} chunks, {len(seen):,} symbols: {report.seconds:6.2f} s "
            f"({report.selections:,} selections, {report.oos_rows:,} oos rows, {rows / report.seconds:,.0f} rows/s)"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=100, help="symbols per chunk load")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pg-url", default=None)
    parser.add_argument("--data", default=None, help="benchmark data folder (default benchmarks/.data)")
    parser.add_argument(
        "--results", default=None, help="a flow's cache/results folder: time the persist step"
    )
    parser.add_argument("--skip-load", action="store_true", help="only the persist step (with --results)")
    args = parser.parse_args()
    if args.skip_load:
        results = {"machine": describe_machine(), "persist": persist_step(Path(args.results))}
        print(f"results: {write_results('db_load', results)}")
        return 0

    from backtest.data.store import Store
    from backtest.db.engine import dispose_engines
    from backtest.db.prices import DbPriceSource, sync_prices

    machine = describe_machine()
    print(machine_line(machine))
    store = ensure_store(W_SYMBOLS, W_YEARS, W_SEED, args.data)
    entries = store.entries()
    symbols = sorted(entries)[: args.symbols]
    rows = sum(entries[s].rows for s in symbols)
    last = max(entries[s].last_date for s in symbols)
    print(f"{len(symbols):,} symbols x {W_YEARS:g} years: {rows:,} rows, chunks of {args.chunk}")

    results: dict[str, Any] = {
        "machine": machine,
        "symbols": len(symbols),
        "rows": rows,
        "chunk": args.chunk,
        "repeat": args.repeat,
        "write": {},
        "load": {},
    }
    with tempfile.TemporaryDirectory(prefix="db-load-") as tmp, postgres(args.pg_url) as pg_url:
        urls = {"sqlite": f"sqlite:///{Path(tmp) / 'prices.db'}"}
        if pg_url:
            urls["postgresql"] = pg_url
        for name, url in urls.items():
            report = sync_prices(store, url, symbols)
            results["write"][name] = {"seconds": report.seconds, "rows_per_s": report.rows / report.seconds}
            print(f"write {name:<10} {report.seconds:7.2f} s  {report.rows / report.seconds:>12,.0f} rows/s")

        sources: dict[str, Callable[[], Any]] = {"parquet": lambda: Store(store.root)}
        for name, url in urls.items():
            sources[name] = lambda url=url: DbPriceSource(url)
        best: dict[str, float] = {}
        panels: dict[str, list[Any]] = {}
        for _ in range(args.repeat):
            for name, make in sources.items():  # interleaved, so load on the machine hits all alike
                dispose_engines()  # cold: new connections, no cached catalog beyond the TTL cache's reset
                from backtest.db import prices

                prices._CATALOG_CACHE.clear()  # cold: the catalog is read again
                seconds, got = timed_load(make, symbols, args.chunk, last)
                best[name] = min(best.get(name, float("inf")), seconds)
                panels.setdefault(name, got)
        for name, seconds in best.items():
            results["load"][name] = {"seconds": seconds, "rows_per_s": rows / seconds}
            ratio = seconds / best["parquet"]
            print(
                f"load  {name:<10} {seconds:7.2f} s  {rows / seconds:>12,.0f} rows/s  {ratio:5.1f}x parquet"
            )
        identical = all(same_panels(panels["parquet"], panels[n]) for n in panels if n != "parquet")
        results["identical_panels"] = identical
        results["sqlite_over_parquet"] = best["sqlite"] / best["parquet"]
        if "postgresql" in best:
            results["postgresql_over_parquet"] = best["postgresql"] / best["parquet"]
        print(
            f"identical panels: {identical}; SQLite / Parquet {results['sqlite_over_parquet']:.1f}x (goal <= 5x)"
        )
        dispose_engines()
    if args.results:
        results["persist"] = persist_step(Path(args.results))
    path = write_results("db_load", results)
    print(f"results: {path}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
