"""Numba kernels of the synthetic universe: the per-bar recursions and the CSV byte writer.

GARCH variance and the price level are sequential recursions, so they cannot be vectorised in numpy; writing
the CSV text byte by byte from integer cents avoids float formatting, which would otherwise dominate the run
(4,000 x 20 years is about 80 million prices). Every kernel is ``nogil`` so threads could share the work too.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Soft price band: outside it the log price is pulled back a little each day, so that a 20-year random walk
# keeps realistic levels (cents rounding stays negligible, no penny or five-figure stocks).
LOG_PRICE_LOW: float = float(np.log(10.0))
LOG_PRICE_HIGH: float = float(np.log(300.0))
BAND_PULL: float = 0.02
# Overnight gap: a share of the day's return plus its own noise, both in units of the day's volatility.
GAP_SHARE: float = 0.3
GAP_NOISE: float = 0.15
# Intraday range beyond max(open, close) and min(open, close), in units of the day's volatility.
RANGE_SCALE: float = 0.25
# Log-volume response to the size of the day's move (per unconditional standard deviation) and its noise.
VOLUME_MOVE: float = 0.35
VOLUME_NOISE: float = 0.35
# Caps the volume exponent so that no draw, however extreme, overflows int64.
MAX_LOG_VOLUME: float = 40.0

_DOT = np.uint8(ord("."))
_COMMA = np.uint8(ord(","))
_NEWLINE = np.uint8(ord("\n"))
_ZERO = np.uint8(ord("0"))


@njit(nogil=True, cache=True)
def garch_returns(z: np.ndarray, mu: float, omega: float, alpha: float, beta: float) -> np.ndarray:
    """Log returns ``mu + sqrt(h_t) z_t`` of a GARCH(1,1) variance started at its unconditional level."""
    n = z.shape[0]
    out = np.empty(n)
    h = omega / (1.0 - alpha - beta)
    for t in range(n):
        e = np.sqrt(h) * z[t]
        out[t] = mu + e
        h = omega + alpha * e * e + beta * h
    return out


@njit(inline="always")
def _cents(price: float) -> np.int64:
    # Round half up: monotone, so orderings between prices survive the rounding.
    c = np.int64(np.floor(price * 100.0 + 0.5))
    return c if c > 1 else np.int64(1)


@njit(nogil=True, cache=True)
def simulate_bars(
    market: np.ndarray,
    sector: np.ndarray,
    mu: float,
    beta: float,
    sector_beta: float,
    omega: float,
    garch_alpha: float,
    garch_beta: float,
    factor_var: float,
    start_price: float,
    log_base_volume: float,
    z: np.ndarray,
    z_gap: np.ndarray,
    e_high: np.ndarray,
    e_low: np.ndarray,
    z_volume: np.ndarray,
    open_c: np.ndarray,
    high_c: np.ndarray,
    low_c: np.ndarray,
    close_c: np.ndarray,
    volume: np.ndarray,
) -> None:
    """Fill one symbol's OHLC (integer cents) and volume over its listed life.

    The day's log return is ``mu + beta * market + sector_beta * sector + eps`` with a GARCH(1,1)
    idiosyncratic ``eps`` (``z`` are unit-variance fat-tailed draws). OHLC consistency is built in before
    rounding and re-imposed after it, so every row satisfies low <= min(open, close) <= max(open, close) <=
    high and low >= 1 cent whatever the draws.
    """
    n = z.shape[0]
    h = omega / (1.0 - garch_alpha - garch_beta)
    sd_unconditional = np.sqrt(factor_var + h)
    lp = np.log(start_price)
    for t in range(n):
        eps = np.sqrt(h) * z[t]
        r = mu + beta * market[t] + sector_beta * sector[t] + eps
        if lp > LOG_PRICE_HIGH:
            r -= BAND_PULL * (lp - LOG_PRICE_HIGH)
        elif lp < LOG_PRICE_LOW:
            r += BAND_PULL * (LOG_PRICE_LOW - lp)
        s = np.sqrt(factor_var + h)
        gap = GAP_SHARE * r + GAP_NOISE * s * z_gap[t]
        o = np.exp(lp + gap)
        c = np.exp(lp + r)
        hi = max(o, c) * np.exp(RANGE_SCALE * s * e_high[t])
        lo = min(o, c) * np.exp(-RANGE_SCALE * s * e_low[t])
        oc = _cents(o)
        cc = _cents(c)
        open_c[t] = oc
        close_c[t] = cc
        high_c[t] = max(_cents(hi), max(oc, cc))
        low_c[t] = min(_cents(lo), min(oc, cc))
        log_volume = log_base_volume + VOLUME_MOVE * abs(r) / sd_unconditional + VOLUME_NOISE * z_volume[t]
        volume[t] = np.int64(np.exp(min(log_volume, MAX_LOG_VOLUME)))
        h = omega + garch_alpha * eps * eps + garch_beta * h
        lp += r


@njit(inline="always")
def _write_uint(buf: np.ndarray, pos: int, value: np.int64) -> int:
    if value == 0:
        buf[pos] = _ZERO
        return pos + 1
    n = 0
    v = value
    while v > 0:
        n += 1
        v //= 10
    v = value
    for k in range(n - 1, -1, -1):
        buf[pos + k] = _ZERO + np.uint8(v % 10)
        v //= 10
    return pos + n


@njit(inline="always")
def _write_cents(buf: np.ndarray, pos: int, cents: np.int64) -> int:
    # Python's shortest repr of cents / 100, as the reference files are written: 15.07, 15.1, 15.0.
    pos = _write_uint(buf, pos, cents // 100)
    buf[pos] = _DOT
    frac = cents % 100
    if frac % 10 == 0:
        buf[pos + 1] = _ZERO + np.uint8(frac // 10)
        return pos + 2
    buf[pos + 1] = _ZERO + np.uint8(frac // 10)
    buf[pos + 2] = _ZERO + np.uint8(frac % 10)
    return pos + 3


@njit(nogil=True, cache=True)
def write_csv_rows(
    buf: np.ndarray,
    pos: int,
    date_text: np.ndarray,
    bars: np.ndarray,
    open_c: np.ndarray,
    high_c: np.ndarray,
    low_c: np.ndarray,
    close_c: np.ndarray,
    volume: np.ndarray,
    name: np.ndarray,
) -> int:
    """Append ``date,open,high,low,close,volume,Name`` rows to ``buf`` from ``pos``; return the new end.

    ``date_text`` is the calendar as ``(n_bars, 10)`` ASCII bytes and ``bars`` the calendar index of each row.
    The caller sizes ``buf`` for the worst case (see ``max_row_bytes``).
    """
    for i in range(bars.shape[0]):
        d = bars[i]
        for k in range(10):
            buf[pos + k] = date_text[d, k]
        pos += 10
        buf[pos] = _COMMA
        pos = _write_cents(buf, pos + 1, open_c[i])
        buf[pos] = _COMMA
        pos = _write_cents(buf, pos + 1, high_c[i])
        buf[pos] = _COMMA
        pos = _write_cents(buf, pos + 1, low_c[i])
        buf[pos] = _COMMA
        pos = _write_cents(buf, pos + 1, close_c[i])
        buf[pos] = _COMMA
        pos = _write_uint(buf, pos + 1, volume[i])
        buf[pos] = _COMMA
        pos += 1
        for k in range(name.shape[0]):
            buf[pos + k] = name[k]
        pos += name.shape[0]
        buf[pos] = _NEWLINE
        pos += 1
    return pos


def max_row_bytes(name_length: int) -> int:
    """Worst-case bytes of one CSV row: 19-digit integers everywhere, so no input can overrun the buffer."""
    return 10 + 6 + 4 * (19 + 3) + 19 + name_length + 1
