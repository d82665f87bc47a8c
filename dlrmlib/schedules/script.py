"""Helpers for kernels written as TVMScript source text (the interaction and the narrow Dense)."""
from __future__ import annotations


def tree_sum(lanes: int, indent: int) -> str:
    """Statements folding acc[0:lanes] into acc[0] in halves (log2(lanes) vector adds, not
    lanes - 1 scalar ones)."""
    pad, lines, half = " " * indent, [], lanes // 2
    while half >= 1:
        lines.append(f"{pad}for l in T.vectorized({half}):\n{pad}    acc[l] = acc[l] + acc[l + {half}]"
                     if half > 1 else f"{pad}acc[0] = acc[0] + acc[1]")
        half //= 2
    return "\n".join(lines)


def parse_prim_func(source: str, name: str):
    """The PrimFunc in `source` (TVMScript, `T` = tvm.script.tirx), exported as `name`."""
    from tvm.script import tirx as T
    from tvm.script.parser import parse

    return parse(source, extra_vars={"T": T}).with_attr("global_symbol", name)
