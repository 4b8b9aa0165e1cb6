"""The convert stage: ConvertRequested -> ConvertDone.

Order of work, so that a crash at any point leaves nothing that looks finished:
marker present -> reply from it (fast no-op); resolve and vet the source; take the lease;
clear leftovers; convert into a fresh location (staging), checking the native levels while
the library writes the rest; check the pyramid (and repair known defects); publish; write
the marker last; release the lease. A failed attempt discards what it wrote.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from geozarr_pipeline import output_store
from geozarr_pipeline.config import Settings
from geozarr_pipeline.convert import check, engine, sources
from geozarr_pipeline.convert.progress import Progress
from geozarr_pipeline.errors import OutputCheckFailed
from geozarr_pipeline.events import ConvertDone, ConvertRequested
from geozarr_pipeline.provenance import pipeline_version


def finished(location: output_store.OutputLocation) -> ConvertDone | None:
    """The reply recorded by a completed conversion, if its store is still there."""
    marker = output_store.completed_marker(location)
    return None if marker is None else ConvertDone.model_validate(marker["done"])


def run(event: ConvertRequested, settings: Settings) -> ConvertDone:
    item_id = event.resolved_item_id
    progress = Progress(item_id, event.collection)
    with output_store.output_for(settings, event.collection, item_id) as location:
        done = _already_done(event, location, progress)
        if done is not None:
            return done
        options = engine.EffectiveOptions.resolve(event.options, settings)
        source = sources.resolve_source(event.source_url, settings, item_id=item_id)
        metadata = sources.read_root_metadata(source.zarr_url, settings, item_id=item_id)
        sources.check_sentinel2_metadata(metadata, source.zarr_url)
        progress.step("resolved", zarr_url=source.zarr_url, options=options.as_dict())
        lease = location.acquire(settings.convert_lease_seconds)
        try:
            # Checked again under the lease: another delivery may have finished meanwhile.
            done = _already_done(event, location, progress)
            if done is not None:
                return done
            return _convert(event, settings, source, options, location, lease, progress)
        finally:
            lease.release()


def _already_done(
    event: ConvertRequested, location: output_store.OutputLocation, progress: Progress
) -> ConvertDone | None:
    done = None if event.options.force else finished(location)
    if done is not None:
        progress.step("already done", output_url=done.output_url)
    return done


def _convert(
    event: ConvertRequested,
    settings: Settings,
    source: sources.SourceProduct,
    options: engine.EffectiveOptions,
    location: output_store.OutputLocation,
    lease: output_store.Lease,
    progress: Progress,
) -> ConvertDone:
    location.clear()
    location.prepare()
    try:
        report = _write_and_check(settings, source, options, location, progress)
        progress.step("checked", arrays=report.arrays_checked, repaired=report.repaired)
        location.publish()
    except BaseException:
        # Nothing unchecked or half-uploaded may stay behind (a kill skips this; the next
        # attempt clears it before converting).
        location.discard()
        raise
    progress.step("published")
    lease.verify()
    done = ConvertDone(
        item_id=event.resolved_item_id,
        collection=event.collection,
        source_url=source.source_url,
        source_item_url=source.item_url,
        zarr_url=source.zarr_url,
        output_url=location.url,
    )
    location.write_marker(_marker(done, options, report, progress))
    progress.step("done", output_url=done.output_url)
    return done


def _write_and_check(
    settings: Settings,
    source: sources.SourceProduct,
    options: engine.EffectiveOptions,
    location: output_store.OutputLocation,
    progress: Progress,
) -> check.CheckReport:
    import zarr

    tree = engine.open_source(source.zarr_url, settings)
    progress.step("open", groups=len(tree.groups))
    checker = check.OutputChecker(
        zarr.open_group(
            sources.local_path(source.zarr_url),
            mode="r",
            storage_options=sources.storage_options(source.zarr_url, settings),
        ),
        native_mode=settings.convert_check_native,
        on_level=lambda level: progress.step("level checked", pyramid_level=level),
    )
    started = time.monotonic()
    with NativeCheck(checker, location) as native_check:

        def on_group_written(group: str) -> None:
            progress.step("group written", group=group)
            native_check.group_written(group)

        engine.convert(tree, location.write_url, options, settings, on_group_written)
        progress.step("converted", seconds=round(time.monotonic() - started, 3))
    try:
        return checker.check_pyramid(_open_output(location, consolidated=True))
    except OutputCheckFailed as exc:
        progress.step("check failed", problems=exc.details.get("problems", []))
        raise


def _open_output(location: output_store.OutputLocation, *, consolidated: bool) -> Any:
    import zarr

    return zarr.open_group(
        location.write_url,
        mode="r+",
        storage_options=location.storage_options(),
        use_consolidated=None if consolidated else False,
    )


class NativeCheck:
    """Runs the native-level check in a thread as soon as those levels are written.

    The library writes r10m/r20m/r60m early and then spends a while on the quality groups
    and the coarser levels; checking the native levels meanwhile takes the check (mostly)
    off the critical path. It runs after the conversion if the levels never showed up.
    """

    def __init__(self, checker: check.OutputChecker, location: output_store.OutputLocation) -> None:
        self.checker = checker
        self.location = location
        self.pending = set(checker.native_groups)
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def group_written(self, group: str) -> None:
        self.pending.discard(group)
        if not self.pending and self.thread is None:
            self.thread = threading.Thread(target=self._run, name="native-check", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        try:
            self.checker.check_native(_open_output(self.location, consolidated=False))
        except BaseException as exc:  # noqa: BLE001  # re-raised in the caller's thread on exit
            self.error = exc

    def __enter__(self) -> NativeCheck:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self.thread is not None:
            self.thread.join()
        if exc_type is not None:
            return
        if self.thread is None:
            self._run()
        if self.error is not None:
            raise self.error


def _marker(
    done: ConvertDone,
    options: engine.EffectiveOptions,
    report: check.CheckReport,
    progress: Progress,
) -> dict[str, Any]:
    return {
        "format": output_store.MARKER_FORMAT,
        "done": done.model_dump(mode="json"),
        "options": options.as_dict(),
        "check": report.as_dict(),
        "completed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": progress.elapsed,
        "eopf_geozarr": engine.load_library().version,
        "pipeline": pipeline_version(),
    }
