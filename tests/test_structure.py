"""The house rules: imports run one way, every stage is registered and digested from its
real imports, nothing edits sys.path, and no document points outside the repository."""
import re
import subprocess

import pytest
from conftest import REPO

from workflow import provenance
from workflow.stages import STAGES

PACKAGE = REPO / "workflow"
# stage families in pipeline order; a family may import only itself, earlier families
# and the shared modules
FAMILIES = ["data", "model", "probing", "attribution", "ablation", "validation", "report"]
SHARED = {"artifacts", "atomic", "config", "errors", "seeding", "stats", "runtime", "provenance", "rerun", "stages", "cli", "__main__", ""}


def modules():
    out = []
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = f.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out.append(".".join(["workflow", *parts]))
    return out


def explicit_imports(module):
    """Imports written in ``module`` (not the parent packages Python also runs)."""
    path = provenance.module_file(module)
    text = path.read_text()
    found = set()
    for m in provenance.direct_imports(module):
        name = m.rsplit(".", 1)[-1]
        if re.search(rf"\b{re.escape(name)}\b", text):
            found.add(m)
    return found


def family(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycle():
    graph = {m: {i for i in explicit_imports(m) if i != m and not m.startswith(i + ".")} for m in modules()}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for n in graph.get(m, ()):
            if state.get(n) == "open":
                raise AssertionError(f"import cycle: {' -> '.join(stack + [m, n])}")
            if n not in state:
                visit(n, stack + [m])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [])


def test_no_stage_imports_a_later_stage():
    for m in modules():
        f = family(m)
        if f not in FAMILIES:
            assert f in SHARED, f"{m}: module outside the families and shared modules"
            continue
        for i in explicit_imports(m):
            g = family(i)
            if g in FAMILIES:
                assert FAMILIES.index(g) <= FAMILIES.index(f), f"{m} (stage family {f}) imports later {i}"


def test_shared_modules_are_torch_free():
    for name in ("artifacts", "atomic", "config", "errors", "seeding", "stats", "stages", "provenance"):
        text = (PACKAGE / f"{name}.py").read_text()
        assert not re.search(r"^(import torch|from torch)", text, re.M), name  # lazy imports inside functions are fine


def test_every_stage_is_registered_and_its_digest_covers_its_imports():
    for stage, (module, function, _) in STAGES.items():
        path = provenance.module_file(module)
        assert f"def {function}(" in path.read_text(), (stage, module, function)
        files = provenance.closure(module, *provenance.ENTRY)
        assert "workflow.cli" in files and "workflow.__main__" in files and module in files
    # score uses seeding (target subset) and probing's probe function: both in its digest
    score = provenance.closure(STAGES["score"][0])
    assert {"workflow.seeding", "workflow.probing.probe_function", "workflow.artifacts"} <= set(score)


def test_digest_changes_with_an_imported_module_only(tmp_path, monkeypatch):
    before = {s: provenance.stage_digest(s) for s in STAGES}
    target = PACKAGE / "probing" / "probe_function.py"
    original = target.read_text()
    try:
        target.write_text(original + "\n# an edit\n")
        provenance.direct_imports.cache_clear()
        after = {s: provenance.stage_digest(s) for s in STAGES}
    finally:
        target.write_text(original)
        provenance.direct_imports.cache_clear()
    changed = {s for s in STAGES if before[s] != after[s]}
    assert changed == {"score", "estimate", "score-margin"}   # all run workflow.attribution.scores


def test_no_sys_path_edits_in_the_workflow():
    for f in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk")), *PACKAGE.rglob("*.py")]:
        assert "sys.path" not in f.read_text(), f
        assert "PYTHONPATH" not in f.read_text(), f


def test_nothing_points_to_an_outside_specification():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    for name in files:
        if not name.endswith((".py", ".smk", ".md", ".yaml", ".rst", ".toml", "Snakefile", "Makefile")):
            continue
        if name == "tests/test_structure.py":     # this test's own pattern
            continue
        text = (REPO / name).read_text()
        assert not re.search(r"SPEC(\.md)?\b|\.\./shared|specification file", text), name


@pytest.mark.parametrize("doc", ["README.md", "docs/method.md", "docs/config.md", "docs/cluster.md", "docs/results.md",
                                 "docs/performance.md", "docs/development.md"])
def test_docs_links_resolve_inside_the_repository(doc):
    text = (REPO / doc).read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        assert (REPO / doc).parent.joinpath(target).resolve().is_relative_to(REPO), (doc, target)
        assert (REPO / doc).parent.joinpath(target).exists(), (doc, target)
