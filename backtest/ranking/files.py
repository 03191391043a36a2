"""The cross-sectional study's intermediate files: each chunk's scores, each block's portfolios.

Named by content keys (the inputs that decide them), written atomically, and read back with NumPy only
(NumPy's default refuses pickled objects): a file that is there and whole is the cache hit, so a re-run recomputes only what is missing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import backtest
from backtest.atomic import atomic_path, json_safe
from backtest.data.panel import PricePanel
from backtest.data.panelio import read_columns
from backtest.engine.planning import code_fingerprint
from backtest.ranking.portfolio import Market, Pieces
from backtest.ranking.study import BlockResult, RankingPlan, walk_forward
from backtest.ranking.universe import membership_mask
from backtest.results.outputs import Collected, cached_entry

_RANKING_MODULES = (
    "portfolio_nb.py",
    "portfolio.py",
    "scores_nb.py",
    "strategies.py",
    "study.py",
    "universe.py",
)


def ranking_code() -> str:
    """The core's code fingerprint plus the ranking package's sources."""
    digest = hashlib.blake2b(code_fingerprint().encode(), digest_size=16)
    root = Path(backtest.__file__).parent / "ranking"
    for name in _RANKING_MODULES:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def _hash(*parts: str) -> str:
    digest = hashlib.blake2b(digest_size=20)
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()


def score_key(plan: RankingPlan, symbols: Sequence[str], data_fingerprint: str, code: str) -> str:
    """A chunk's scores depend on its data, the score combinations, the last day and the code, nothing else."""
    s = plan.strategy
    identity = repr((s.name, s.source_hash(), plan.score_combos.tolist(), plan.last_date.isoformat()))
    return "scores-" + _hash("\0".join(symbols), data_fingerprint, identity, code)


def block_key(plan: RankingPlan, score_keys: Sequence[str], combos: Sequence[int], code: str) -> str:
    return "block-" + _hash("|".join(score_keys), repr(list(combos)), plan.identity(), code)


def cut(panel: PricePanel, last: np.datetime64) -> PricePanel:
    """The panel up to the study's last day (every stage cuts the same way, so the arrays line up)."""
    n = int(np.searchsorted(panel.dates, last, side="right"))
    if n == panel.n_bars:
        return panel
    return PricePanel(
        symbols=panel.symbols,
        dates=panel.dates[:n],
        **{
            f: np.ascontiguousarray(getattr(panel, f)[:, :n])
            for f in ("open", "high", "low", "close", "volume")
        },
    )


def save_scores(scores: np.ndarray, path: Path) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, scores, allow_pickle=False)
    return path


def whole(path: Path) -> bool:
    """The file is there and NumPy can read its header (a half-written file never gets its final name)."""
    try:
        if path.suffix == ".npz":
            with np.load(path) as data:
                return len(data.files) > 0
        np.load(path, mmap_mode="r")
        return True
    except (OSError, ValueError, EOFError):
        return False


@dataclass(frozen=True, eq=False)
class ChunkCloses:
    """A chunk's closes (and opens) up to the study's last day, read from its price file."""

    symbols: tuple[str, ...]
    dates: np.ndarray
    close: np.ndarray
    open: np.ndarray | None

    @classmethod
    def read(cls, path: Path, last: np.datetime64, opens: bool) -> ChunkCloses:
        got = read_columns(path, ("close", "open") if opens else ("close",))
        n = int(np.searchsorted(got.dates, last, side="right"))
        return cls(
            got.symbols,
            got.dates[:n],
            got.fields["close"][:, :n],
            got.fields["open"][:, :n] if opens else None,
        )


class MarketLoader:
    """The whole universe on the union calendar of its chunks, and each score combination's scores on it.

    ``chunks`` read the chunks' prices in universe order, already cut: anything with ``symbols``, ``dates``,
    ``close`` and (with ``opens``) ``open``, such as a ``PricePanel`` or a ``ChunkCloses`` (memory-mapped: a
    read costs nothing until its prices are touched). Each is called twice, once for the calendars, once to
    copy its prices into the market and let them go, so that the market's 160 MB of closes are never held
    twice. ``score_files`` are their score files, read one combination and one chunk at a time (``pieces``).
    """

    def __init__(
        self,
        chunks: Sequence[Callable[[], PricePanel | ChunkCloses]],
        score_files: Sequence[Path],
        membership: pd.DataFrame | None = None,
        opens: bool = True,
    ) -> None:
        calendars, symbols = [], []
        for read in chunks:
            chunk = read()
            calendars.append(np.asarray(chunk.dates))
            symbols.extend(chunk.symbols)
            del chunk
        self.dates = np.unique(np.concatenate(calendars)) if calendars else np.zeros(0, "datetime64[D]")
        self.symbols = tuple(symbols)
        self._files = list(score_files)
        self._cols = [np.searchsorted(self.dates, d) for d in calendars]
        close = np.full((len(self.symbols), len(self.dates)), np.nan)
        # the opens only for next_open fills: at the close they are never read (160 MB for a whole market)
        open_ = np.full_like(close, np.nan) if opens else close
        row = 0
        starts = [0]
        for k, read in enumerate(chunks):
            chunk = read()
            rows = slice(row, row + len(chunk.symbols))
            whole = len(self._cols[k]) == len(self.dates)  # the usual case: a plain copy of rows
            cols = slice(None) if whole else self._cols[k]
            close[rows, cols] = chunk.close
            if opens:
                open_[rows, cols] = chunk.open
            row += len(chunk.symbols)
            starts.append(row)
            del chunk
        self._rows = np.array(starts)
        member = (
            np.zeros((0, 0), np.bool_)
            if membership is None
            else membership_mask(membership, self.symbols, self.dates)
        )
        self.market = Market(self.symbols, self.dates, close, open_, member)

    def pieces(self, s: int) -> Pieces:
        """Score combination ``s`` chunk by chunk, each read from its file only when used (memory-mapped):
        a chunk whose calendar misses days of the market's is widened to it."""

        def chunks() -> Iterator[tuple[int, np.ndarray]]:
            n_days = len(self.dates)
            for k, path in enumerate(self._files):
                rows = np.load(path, mmap_mode="r")[s]
                if len(self._cols[k]) != n_days:
                    wide = np.full((rows.shape[0], n_days), np.nan, dtype=np.float32)
                    wide[:, self._cols[k]] = rows
                    rows = wide
                yield int(self._rows[k]), rows

        return chunks


def collect_study(
    plan: RankingPlan,
    symbols: Sequence[str],
    block_files: Sequence[Path],
    out: Path,
    cache: Path,
    key: str,
) -> Collected:
    """The study's tables in ``out`` from its blocks' portfolios (the walk-forward), kept in ``cache/<key>``
    so that a re-run with the same blocks links them instead of walking forward again."""

    def build(folder: Path) -> dict[str, object]:
        blocks = [BlockResult.load(Path(p)) for p in block_files]
        result = walk_forward(plan, symbols, blocks[0].dates, blocks)
        del blocks
        result.save(folder)
        return {"figures": json_safe(result.figures()), "timings": result.timings}

    return cached_entry(cache, key, build, out)
