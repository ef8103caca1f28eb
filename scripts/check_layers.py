#!/usr/bin/env python3
"""Check that Raindrop's modules depend on each other in one direction.

Reads every `src/**/*.rs` file, finds references to other top-level modules
(`crate::<module>` paths, including inside `use crate::{a, b}` groups), and
fails if the module graph has a cycle or if a module depends on one placed
above it in LAYERS. Run by `.ci/run`; `python3 scripts/check_layers.py -v`
prints the graph.
"""
import pathlib
import re
import sys

# Top to bottom: a module may depend only on modules listed after it.
LAYERS = [
    "main", "cli", "demo", "server", "config", "client",
    "http", "flight", "rest",
    "maintenance", "query", "ingest",
    "tenant",
    "catalog", "storage",
    "schema", "batch", "background", "error", "metrics",
]

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"


def module_of(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".rs")


def referenced(text: str) -> set[str]:
    # Drop comments, so doc links and prose do not count as dependencies.
    code = re.sub(r"//[^\n]*", "", text)
    found = set(re.findall(r"\bcrate::([a-z_]+)", code))
    for group in re.findall(r"\bcrate::\{([^}]*)\}", code):
        found.update(re.findall(r"(?:^|,)\s*([a-z_]+)", group))
    return found


def main() -> int:
    modules = {module_of(p) for p in SRC.rglob("*.rs")} - {"lib"}
    unknown = modules - set(LAYERS)
    if unknown:
        print(f"modules missing from LAYERS in {__file__}: {sorted(unknown)}")
        return 1
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for path in SRC.rglob("*.rs"):
        src = module_of(path)
        if src == "lib":
            continue
        for dst in referenced(path.read_text()) & modules:
            if dst != src:
                edges[src].add(dst)
    rank = {m: i for i, m in enumerate(LAYERS)}
    bad = [(a, b) for a, targets in edges.items() for b in targets if rank[b] < rank[a]]
    if "-v" in sys.argv:
        for m in LAYERS:
            if m in edges:
                print(f"{m:12} -> {', '.join(sorted(edges[m], key=rank.get))}")
    if bad:
        for a, b in sorted(bad):
            print(f"layering violation: {a} depends on {b}, which sits above it")
        return 1
    print(f"module layers ok: {len(modules)} modules, {sum(map(len, edges.values()))} edges, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
