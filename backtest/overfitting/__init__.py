"""How much of a study's result could be luck (docs/design.md section 7).

The Sharpe ratio deflated for the number of trials, the probability of backtest overfitting by
combinatorially symmetric cross-validation, and Hansen's SPA test from ``arch``, all from data a study already
has: the trials' daily return matrix summed over the chunks, and the stitched out-of-sample returns.
"""
