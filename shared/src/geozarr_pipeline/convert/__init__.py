"""The convert stage's parts: sources, engine (eopf-geozarr), check, progress; the store it
writes (location, lease, completion marker) is `geozarr_pipeline.output_store`."""
