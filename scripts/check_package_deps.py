#!/usr/bin/env python3
"""Checks that Package.swift declares exactly what each target imports: every module a target's sources
import is one of its declared dependencies (or the toolchain's), and every declared dependency is
imported somewhere in the target. Run by scripts/test.sh; exits 1 with the differences.

Reads the package as SwiftPM resolves it (`swift package dump-package`), so paths and products are
SwiftPM's own. Imports under `#if canImport(X)` count as imports of X.
"""
import json
import os
import re
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# Modules that come with the toolchain or the system, never declared in Package.swift.
TOOLCHAIN = {"Foundation", "FoundationEssentials", "Glibc", "Dispatch", "Testing", "XCTest", "Synchronization",
             "_Concurrency", "Darwin", "Musl", "os"}
IMPORT = re.compile(r"^\s*(?:@testable\s+|@_exported\s+|@preconcurrency\s+)*import\s+(?:(?:struct|class|enum|func|protocol|typealias|var|let)\s+)?([A-Za-z_][A-Za-z0-9_]*)", re.M)


def main():
    pkg = json.loads(subprocess.run(["swift", "package", "dump-package"], cwd=REPO, check=True,
                                    capture_output=True, text=True).stdout)
    problems = []
    for t in pkg["targets"]:
        if t["type"] in ("system", "binary", "plugin", "macro"):
            continue
        name = t["name"]
        default = ("Tests/" if t["type"] == "test" else "Sources/") + name
        path = os.path.join(REPO, t.get("path") or default)
        excluded = [os.path.join(path, e) for e in t.get("exclude", [])]
        declared = set()
        for d in t.get("dependencies", []):
            for kind in ("byName", "target", "product"):
                if kind in d:
                    declared.add(d[kind][0])
        imported = {}
        for root, dirs, files in os.walk(path):
            if any(root == e or root.startswith(e + os.sep) for e in excluded):
                continue
            for f in files:
                if not f.endswith(".swift"):
                    continue
                p = os.path.join(root, f)
                with open(p, encoding="utf-8") as fh:
                    for m in IMPORT.finditer(fh.read()):
                        imported.setdefault(m.group(1), os.path.relpath(p, REPO))
        for mod, where in sorted(imported.items()):
            if mod not in TOOLCHAIN and mod not in declared and mod != name:
                problems.append(f"{name}: imports {mod} ({where}) but does not declare it")
        for dep in sorted(declared - set(imported)):
            problems.append(f"{name}: declares {dep} but no source imports it")
    if problems:
        print("Package.swift does not match the imports:")
        for p in problems:
            print("  " + p)
        return 1
    print(f"Package.swift matches the imports of {len(pkg['targets'])} targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
