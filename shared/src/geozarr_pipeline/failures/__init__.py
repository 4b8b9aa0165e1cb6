"""Failure records: one durable record per event the pipeline could not process.

`records` builds a record from what reaches the failure recorder (an `eopf.geozarr.failed`
reply or a Trigger's dead letter), `store` keeps records in the object storage the pipeline
already writes to, `recorder` is the Service the Triggers deliver to, `commands` the CLI.
"""
