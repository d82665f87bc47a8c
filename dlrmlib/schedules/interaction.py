"""The DLRM's gathers + dot interaction + concatenation as one TensorIR kernel.

The imported graph gathers 26 embedding rows per sample, concatenates them with the bottom
MLP's output into [B, 27*128], multiplies Z by Z^T for all 27 x 27 dot products, keeps the
351 below the diagonal through an index gather and concatenates again: five memory-bound
passes and a naive batched matmul (40 ms of 60 at batch 128 untuned). Here each sample's 27
vectors are gathered into a stack buffer (straight from the tables), only the strictly lower
triangle is computed, with 16-lane partial sums, and the top MLP's input row is written once.
"""
from __future__ import annotations

from dataclasses import dataclass

from dlrmlib.schedules.script import parse_prim_func, tree_sum

LANES = 16
PREFETCH_SAMPLES = 4  # rows of the sample this many places ahead are requested now...
PREFETCH_LOCALITY = 2  # ...into L2 (prefetcht1): into L1 (3), 4 samples' 832 lines evict each other
ROWS = 2  # rows of the triangle computed together, sharing each loaded vector j (1: a pair at a time)


@dataclass(frozen=True)
class InteractionShape:
    batch: int
    dim: int
    table_rows: tuple[int, ...]
    index_dtype: str = "int64"
    id_rows: tuple[int, ...] | None = None  # row of lS_i [T, B] per table: ids read from it directly

    @property
    def vectors(self) -> int:
        return len(self.table_rows) + 1

    @property
    def pairs(self) -> int:
        return self.vectors * (self.vectors - 1) // 2

    @property
    def width(self) -> int:
        return self.dim + self.pairs

    @property
    def name(self) -> str:
        stacked = "_ids" if self.id_rows is not None else ""
        return f"interaction_b{self.batch}_d{self.dim}_t{len(self.table_rows)}{stacked}"


def tril_pairs(n: int) -> list[int]:
    """Flat [n*n] positions of the strictly lower triangle, row by row: the order DLRM's
    interaction (and the ONNX export's index gather) uses."""
    return [i * n + j for i in range(n) for j in range(i)]


def _prefetches(shape: InteractionShape, ids_ahead: list[str], distance: int, locality: int) -> str:
    """Ask for sample s + distance's embedding rows now, so that their DRAM misses overlap this
    sample's dot products. Without it the copy of the rows into the stack buffer stalls: its
    stores wait in order for their loads' misses, so only a few rows are ever in flight (measured
    at batch 2048, 2 threads: 1.8 us per sample without, 1.25-1.3 with distance 4 into L2)."""
    if distance <= 0:
        return ""
    lines = max(1, 4 * shape.dim // 64)  # cache lines per row (16 floats each)
    body = "\n".join(
        f"                T.evaluate(T.call_llvm_intrin(\"void\", \"llvm.prefetch.p0\", "
        f"T.address_of(e{k}[{ids_ahead[k]}, c * 16]), 0, {locality}, 1))"
        for k in range(len(shape.table_rows)))
    return (f"        if s + {distance} < {shape.batch}:\n"
            f"            for c in T.unroll({lines}):\n{body}\n")


def _dots(shape: InteractionShape, rows: list[int], lanes: int) -> str:
    """Loop body: the dot products of vectors `rows` with vector j, accumulated side by side in
    acc (16-lane partial sums each), folded and stored at their places in the triangle."""
    d, pad = shape.dim, " " * 12
    lines = [f"{pad}for l in T.vectorized({len(rows) * lanes}):\n{pad}    acc[l] = T.float32(0)",
             f"{pad}for c0 in range({d // lanes}):"]
    lines += [f"{pad}    for l in T.vectorized({lanes}):\n{pad}        acc[{r * lanes} + l] = acc[{r * lanes} + l] + "
              f"z[{i * d} + c0 * {lanes} + l] * z[j * {d} + c0 * {lanes} + l]" for r, i in enumerate(rows)]
    for r, i in enumerate(rows):
        lines.append(tree_sum(lanes, 12).replace("acc[", f"acc[{r * lanes} + "))
        lines.append(f"{pad}out[s, {d + i * (i - 1) // 2} + j] = acc[{r * lanes}]")
    return "\n".join(lines)


def _triangle(shape: InteractionShape, lanes: int, rows: int) -> str:
    """The strictly lower triangle, `rows` rows i at a time: each vector j < i is loaded once
    for all of them (the row block's own vectors stay in registers); the pairs a block's later
    rows have beyond its first row's j run after it, one row at a time."""
    n, blocks = shape.vectors, []
    for first in range(1, n, rows):
        block = list(range(first, min(first + rows, n)))
        blocks.append(f"        for j in range({first}):\n{_dots(shape, block, lanes)}")
        for k, i in enumerate(block[1:], start=1):
            blocks.append(f"        for j in range({first}, {i}):\n{_dots(shape, block[k:], lanes)}")
    return "\n".join(blocks)


def _script(shape: InteractionShape, prefetch: int, locality: int, rows: int) -> str:
    """TVMScript source: one argument per index vector and per table keeps every gather a
    plain load from the table's own buffer (no stacked copy of the tables)."""
    b, d, n, t = shape.batch, shape.dim, shape.vectors, len(shape.table_rows)
    lanes = LANES if d % LANES == 0 else 1
    tab_args = ", ".join(f'e{k}: T.Buffer(({rows}, {d}), "float32")' for k, rows in enumerate(shape.table_rows))
    if shape.id_rows is None:
        idx_args = ", ".join(f'i{k}: T.Buffer(({b},), "{shape.index_dtype}")' for k in range(t))
        ids = [f"i{k}[s]" for k in range(t)]
    else:  # ONNX Gather semantics: a negative id counts from the end of the table
        idx_args = f'ids: T.Buffer(({max(shape.id_rows) + 1}, {b}), "{shape.index_dtype}")'
        ids = [f"T.if_then_else(ids[{r}, s] < 0, ids[{r}, s] + {rows}, ids[{r}, s])"
               for r, rows in zip(shape.id_rows, shape.table_rows)]
    ahead = [i.replace("s]", f"s + {prefetch}]") for i in ids]
    gathers = "\n".join(
        f"        for c in T.vectorized({d}):\n            z[{k + 1} * {d} + c] = e{k}[{ids[k]}, c]"
        for k in range(t))
    return f'''
@T.prim_func
def {shape.name}(x: T.Buffer(({b}, {d}), "float32"), {idx_args}, {tab_args},
         out: T.Buffer(({b}, {shape.width}), "float32")):
    T.func_attr({{"tirx.noalias": True}})
    for s in T.parallel({b}):
{_prefetches(shape, ahead, prefetch, locality) if shape.id_rows is not None else ""}        z = T.decl_buffer(({n * d},), "float32")
        acc = T.decl_buffer(({rows * lanes},), "float32")
        for c in T.vectorized({d}):
            z[c] = x[s, c]
            out[s, c] = x[s, c]
{gathers}
{_triangle(shape, lanes, rows)}
'''


def interaction_func(shape: InteractionShape, prefetch: int = PREFETCH_SAMPLES, locality: int = PREFETCH_LOCALITY,
                     rows: int = ROWS):
    """(x, idx_0..idx_{T-1}, table_0..table_{T-1}) -> [B, dim + pairs] PrimFunc; with the stacked
    [T, B] ids, each sample prefetches the rows of the sample `prefetch` places ahead, into the
    cache level `locality` names (LLVM's prefetch: 3 = L1 ... 0 = no temporal locality); `rows`
    rows of the triangle share each load (1 is the one-pair-at-a-time kernel, kept to compare)."""
    return parse_prim_func(_script(shape, prefetch, locality, rows), shape.name)
