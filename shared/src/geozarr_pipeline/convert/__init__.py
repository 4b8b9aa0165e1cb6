"""The convert stage's parts: sources, storage, engine (eopf-geozarr), check, progress."""
