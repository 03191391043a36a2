"""Results out: chunk files, collected study outputs, the hand-off to the database, the cache layout."""
