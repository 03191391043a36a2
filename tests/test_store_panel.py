"""Store.load's alignment of symbols on one calendar, against a pandas pivot of the same bars."""

import numpy as np
import pandas as pd
import pyarrow as pa

from backtest.panel import PRICE_FIELDS
from backtest.store import Store
from backtest.validation import STORED_SCHEMA


def test_load_aligns_like_a_pivot_of_the_bars(tmp_path) -> None:
    rng = np.random.default_rng(8)
    store = Store(tmp_path / "store")
    frames = {}
    with store.writer(durable=False) as w:
        for i in range(12):
            start = np.datetime64("2020-01-01") + int(rng.integers(0, 40))
            span = np.arange(int(rng.integers(1, 80)))
            if i % 3 == 0:  # gaps inside the symbol's own span
                span = np.unique(rng.choice(span, size=max(1, len(span) // 2)))
            days = start + span
            prices = {f: rng.random(len(days)) + 1.0 for f in PRICE_FIELDS}
            table = pa.table(
                {"date": pa.array(days.astype("datetime64[D]")).cast(pa.date32()), **prices},
                schema=STORED_SCHEMA,
            )
            w.write_symbol(f"S{i:02d}", table)
            frames[f"S{i:02d}"] = pd.DataFrame({"date": days, **prices})
    symbols = sorted(frames, reverse=True)
    panel = store.load(symbols)
    long = pd.concat([f.assign(symbol=s) for s, f in frames.items()])
    for name in PRICE_FIELDS:
        wide = long.pivot(index="symbol", columns="date", values=name).loc[symbols]
        assert np.array_equal(panel.dates, wide.columns.to_numpy().astype("datetime64[D]"))
        np.testing.assert_array_equal(getattr(panel, name), wide.to_numpy())
