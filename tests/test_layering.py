"""The layering of the code (README "Layout"), kept true: no import points upwards.

Every module of the workspace is given a layer below; a module may import its own layer and
the layers under it, never one above. Every import counts, lazy ones inside functions and
`TYPE_CHECKING` ones included. A new module must be placed here before it can be imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PACKAGES: dict[str, Path] = {
    "geozarr_pipeline": ROOT / "shared" / "src" / "geozarr_pipeline",
    "geozarr_local": ROOT / "local" / "src" / "geozarr_local",
    "geozarr_convert": ROOT / "functions" / "convert" / "geozarr_convert",
    "geozarr_register": ROOT / "functions" / "register" / "geozarr_register",
    "geozarr_augment": ROOT / "functions" / "augment" / "geozarr_augment",
}

# Bottom to top. Entries name a module or a package prefix (`catalog.` covers all of it);
# the longest matching entry wins, so `catalog.commands` sits above the rest of `catalog.`.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "contract",
        (
            "geozarr_pipeline.errors",
            "geozarr_pipeline.events",
            "geozarr_pipeline.config",
            "geozarr_pipeline.redaction",
            "geozarr_pipeline.logs",
            "geozarr_pipeline.files",
            "geozarr_pipeline.provenance",
            "geozarr_pipeline.faults",
            "geozarr_pipeline.retries",
            "geozarr_pipeline.jsonhttp",
            "geozarr_pipeline.cloudevent_http",
        ),
    ),
    (
        "adapters",
        (
            "geozarr_pipeline.s3",
            "geozarr_pipeline.objects",
            "geozarr_pipeline.output_store",
            "geozarr_pipeline.urlpolicy",
            "geozarr_pipeline.attempts",
            "geozarr_pipeline.catalog",
            "geozarr_pipeline.catalog.",
            "geozarr_pipeline.stac.store",
            "geozarr_pipeline.failures.records",
            "geozarr_pipeline.failures.store",
            "geozarr_pipeline.failures.resolutions",
        ),
    ),
    (
        "domain",
        (
            "geozarr_pipeline.convert",
            "geozarr_pipeline.convert.",
            "geozarr_pipeline.stac",
            "geozarr_pipeline.stac.",
            "geozarr_pipeline.visual",
            "geozarr_pipeline.visual.",
        ),
    ),
    (
        "stages",
        (
            "geozarr_pipeline.stages",
            "geozarr_pipeline.stages.",
            "geozarr_pipeline.delivery",
            "geozarr_pipeline.stage_function",
            "geozarr_pipeline.failures.recorder",
        ),
    ),
    # The function entrypoints: thin, above the stages they run.
    (
        "functions",
        (
            *("geozarr_convert", "geozarr_register", "geozarr_augment"),
            *("geozarr_convert.", "geozarr_register.", "geozarr_augment."),
        ),
    ),
    (
        "operations",
        (
            "geozarr_pipeline",
            "geozarr_pipeline.__main__",
            "geozarr_pipeline.cli",
            "geozarr_pipeline.guard",
            "geozarr_pipeline.submit",
            "geozarr_pipeline.broker_client",
            "geozarr_pipeline.operations",
            "geozarr_pipeline.operations.",
            "geozarr_pipeline.failures",
            "geozarr_pipeline.failures.commands",
            "geozarr_pipeline.convert.commands",
            "geozarr_pipeline.catalog.commands",
        ),
    ),
    # The local stand-ins, in their own workspace member: nothing below may import them.
    ("local", ("geozarr_local", "geozarr_local.")),
]
RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}


def layer_of(module: str) -> str | None:
    best: tuple[int, str] | None = None
    for name, entries in LAYERS:
        for entry in entries:
            hit = module.startswith(entry) if entry.endswith(".") else module == entry
            if hit and (best is None or len(entry) > best[0]):
                best = (len(entry), name)
    return best[1] if best else None


def module_name(package: str, root: Path, path: Path) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def workspace_modules() -> dict[str, Path]:
    return {
        module_name(package, root, path): path
        for package, root in PACKAGES.items()
        for path in sorted(root.rglob("*.py"))
    }


MODULES = workspace_modules()


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import of a workspace module; `from pkg import mod` is `mod`."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                yield node.lineno, candidate if candidate in MODULES else node.module


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(module for module in MODULES if layer_of(module) is None)
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"


def upward_imports(modules: dict[str, Path]) -> list[str]:
    upward: list[str] = []
    for module, path in modules.items():
        layer = layer_of(module)
        assert layer is not None
        for line, target in imports_of(path):
            if target.split(".")[0] not in PACKAGES:
                continue
            target_layer = layer_of(target)
            assert target_layer is not None, f"{path}:{line} imports unknown {target}"
            if RANK[target_layer] > RANK[layer]:
                upward.append(f"{path}:{line} {module} ({layer}) -> {target} ({target_layer})")
    return upward


def test_no_import_points_upwards() -> None:
    upward = upward_imports(MODULES)
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_the_functions_import_neither_each_other_nor_the_operator_commands() -> None:
    for module, path in MODULES.items():
        if layer_of(module) != "functions":
            continue
        own = module.split(".")[0]
        for line, target in imports_of(path):
            package = target.split(".")[0]
            assert package in (own, "geozarr_pipeline") or package not in PACKAGES, (
                f"{path}:{line} imports {target}"
            )


@pytest.mark.parametrize(
    ("module", "statement", "reported"),
    [
        ("geozarr_pipeline.events", "from geozarr_pipeline.stages import convert", True),
        ("geozarr_pipeline.output_store", "import geozarr_local.stack", True),
        (
            "geozarr_pipeline.stages.register",
            "def f():\n    from geozarr_pipeline.operations.status import item_status",
            True,
        ),
        ("geozarr_register.main", "from geozarr_local.processes import free_port", True),
        ("geozarr_local.stack", "from geozarr_pipeline import output_store", False),
        ("geozarr_pipeline.stages.register", "from geozarr_pipeline.errors import X", False),
    ],
)
def test_the_check_reports_an_upward_import(
    tmp_path: Path, module: str, statement: str, reported: bool
) -> None:
    source = tmp_path / "module.py"
    source.write_text(statement + "\n")
    assert bool(upward_imports({module: source})) is reported
