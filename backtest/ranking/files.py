"""The cross-sectional study's intermediate files: each chunk's scores, each block's portfolios.

Named by content keys (the inputs that decide them), written atomically, and read back with NumPy only
(NumPy's default refuses pickled objects): a file that is there and whole is the cache hit, so a re-run recomputes only what is missing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import backtest
from backtest.atomic import atomic_path
from backtest.data.panel import PricePanel
from backtest.data.panelio import read_columns
from backtest.engine.planning import code_fingerprint
from backtest.ranking.portfolio import Market
from backtest.ranking.study import RankingPlan
from backtest.ranking.universe import membership_mask

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
    """The whole universe on the union calendar of its chunks, and each score combination's array on it.

    ``panels`` are the chunks' prices in universe order, already cut: anything with ``symbols``, ``dates``,
    ``close`` and (with ``opens``) ``open``, such as a ``PricePanel`` or a ``ChunkCloses``; ``score_files``
    their score files. Scores are read one combination at a time (80 MB for a whole market, float32).
    """

    def __init__(
        self,
        panels: Sequence[PricePanel | ChunkCloses],
        score_files: Sequence[Path],
        membership: pd.DataFrame | None = None,
        opens: bool = True,
    ) -> None:
        self.dates = (
            np.unique(np.concatenate([p.dates for p in panels])) if panels else np.zeros(0, "datetime64[D]")
        )
        self.symbols = tuple(s for p in panels for s in p.symbols)
        self._files = list(score_files)
        self._cols = [np.searchsorted(self.dates, p.dates) for p in panels]
        self._rows = np.cumsum([0] + [len(p.symbols) for p in panels])
        close = np.full((len(self.symbols), len(self.dates)), np.nan)
        # the opens only for next_open fills: at the close they are never read (160 MB for a whole market)
        open_ = np.full_like(close, np.nan) if opens else close
        for k, p in enumerate(panels):
            rows = slice(self._rows[k], self._rows[k + 1])
            close[rows, self._cols[k]] = p.close
            if opens:
                open_[rows, self._cols[k]] = p.open
        member = (
            np.zeros((0, 0), np.bool_)
            if membership is None
            else membership_mask(membership, self.symbols, self.dates)
        )
        self.market = Market(self.symbols, self.dates, close, open_, member)

    def scores(self, s: int) -> np.ndarray:
        out = np.full((len(self.symbols), len(self.dates)), np.nan, dtype=np.float32)
        for k, path in enumerate(self._files):
            chunk = np.load(path, mmap_mode="r")
            out[self._rows[k] : self._rows[k + 1], self._cols[k]] = chunk[s]
        return out
