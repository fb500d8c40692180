#!/usr/bin/env python3
"""File-level import cycles between the top-level modules of a crate's src (default web/src):
edges from `crate::MOD` paths and `use crate::{a, b}` groups. Usage: python3 .ci/import_cycles.py web/src"""
import re, sys, pathlib
root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "web/src")
mods = {}
for f in sorted(root.rglob("*.rs")):
    rel = f.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod": parts = parts[:-1]
    if parts in (["lib"], ["main"]): continue
    mods[f] = parts[0]
edges = {}
for f, m in mods.items():
    text = f.read_text()
    # Test modules count too: a file's imports are all of its text.
    used = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", text))
    for group in re.findall(r"crate::\{([^}]*)\}", text):
        used |= set(re.findall(r"(?:^|[,\s])([a-z_][a-z0-9_]*)", group))
    used = {u for u in used if u in set(mods.values()) and u != m}
    edges.setdefault(m, set()).update(used)
# Tarjan SCC
index, low, stack, on, sccs, i = {}, {}, [], set(), [], [0]
def strong(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in index: strong(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        c = []
        while True:
            w = stack.pop(); on.discard(w); c.append(w)
            if w == v: break
        if len(c) > 1: sccs.append(sorted(c))
for v in sorted(edges):
    if v not in index:
        strong(v)
pairs = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if a in edges.get(b, ())})
print("mutual imports:", ", ".join(f"{a} <-> {b}" for a, b in pairs) or "none")
print("cycles (strongly connected groups):", "; ".join(" ".join(c) for c in sccs) or "none")
for c in sccs:
    for a in c:
        print(f"  {a} -> {', '.join(sorted(e for e in edges[a] if e in c))}")
