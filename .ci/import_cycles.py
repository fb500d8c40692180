#!/usr/bin/env python3
"""File-level import cycles in one crate: for every .rs file under SRC, the `crate::` / `super::` modules
it uses, then the strongly connected components. Exits 1 when a cycle is found that `--allow A,B`
(files relative to SRC, one cycle's members) does not name.
Usage: python3 .ci/import_cycles.py exchange/src [--allow matching/level.rs,matching/table.rs]"""
import os, re, sys
src = sys.argv[1]
allowed = []
if len(sys.argv) > 3 and sys.argv[2] == '--allow':
    allowed = [set(group.split(',')) for group in sys.argv[3:]]
files = {}
for root, _, names in os.walk(src):
    for n in names:
        if n.endswith('.rs'):
            p = os.path.join(root, n)
            rel = os.path.relpath(p, src)[:-3]
            parts = rel.split(os.sep)
            if parts[-1] in ('mod', 'lib', 'main'):
                parts = parts[:-1]
            files[tuple(parts)] = p
def resolve(path):
    # longest module prefix that is a file
    for i in range(len(path), -1, -1):
        if tuple(path[:i]) in files:
            return tuple(path[:i])
    return None
edges = {m: set() for m in files}
for mod, p in files.items():
    text = open(p).read()
    text = re.sub(r'//[^\n]*', '', text)
    # strip #[cfg(test)] mod tests { ... } is hard; ignore: tests use super::* which we skip below
    is_modfile = p.endswith(('mod.rs', 'lib.rs', 'main.rs'))
    parent = mod if is_modfile else mod[:-1]
    def add(path):
        t = resolve(path)
        if t is not None and t != mod and t != ():
            edges[mod].add(t)
    for m in re.finditer(r'\bcrate((?:::\w+)+)', text):
        add([x for x in m.group(1).split('::') if x])
    for m in re.finditer(r'\bsuper((?:::\w+)+)', text):
        segs = [x for x in m.group(1).split('::') if x]
        base = list(parent)
        while segs and segs[0] == 'super':
            base = base[:-1]; segs = segs[1:]
        if segs and segs[0] == '*':
            continue
        add(base + segs)
    for m in re.finditer(r'\bcrate::\{([^}]*)\}', text):
        for item in m.group(1).split(','):
            segs = [x for x in item.strip().split('::') if x and x not in ('self', '*')]
            if segs:
                add(segs)
    for m in re.finditer(r'\buse\s+super::\{([^}]*)\}', text):
        for name in re.split(r'[,\s]+', m.group(1)):
            name = name.strip()
            if name and name not in ('self', '*'):
                add(list(parent) + [name])
# Tarjan SCC
index = {}; low = {}; stack = []; on = set(); sccs = []; c = [0]
sys.setrecursionlimit(10000)
def sc(v):
    index[v] = low[v] = c[0]; c[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            sc(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1:
            sccs.append(comp)
for v in sorted(edges):
    if v not in index: sc(v)
name = lambda m: os.path.relpath(files[m], src)
if not sccs:
    print("no file-level import cycles")
for comp in sccs:
    s = set(comp)
    print("cycle:", " ↔ ".join(sorted(name(m) for m in comp)))
    for m in sorted(comp):
        print("   ", name(m), "→", ", ".join(sorted(name(t) for t in edges[m] if t in s)))
unexpected = [comp for comp in sccs if set(name(m) for m in comp) not in allowed]
sys.exit(1 if unexpected else 0)
