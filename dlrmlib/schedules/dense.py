"""Packed-weight GEMM with a fused bias + ReLU epilogue, written as TensorIR.

TVM 0.27's wheel has no CPU matmul schedule (dlight CPU covers GEMV and reductions only), so
an untuned Dense runs as a naive triple loop. This kernel is the classic BLAS structure:
weights pre-packed once into column panels [N/bn, K, bn] (contiguous, unit-stride vector
loads along bn), an mr x bn register-blocked accumulator that stays in vector registers over
the whole K loop, and the bias + ReLU applied while the tile is still in registers.
"""
from __future__ import annotations

from dataclasses import dataclass

from dlrmlib.schedules.script import parse_prim_func, tree_sum

PANEL = 32  # bn: 2 AVX-512 or 4 AVX2 fp32 vectors per accumulator row
SERIAL_MACS = 64 * 1024  # below this a layer runs on one thread: waking the pool costs more


@dataclass(frozen=True)
class DenseShape:
    """One fully connected layer at a fixed batch: out[M, N] = act(x[M, K] @ W[N, K]^T + b)."""

    m: int
    k: int
    n: int
    relu: bool = True

    @property
    def narrow(self) -> bool:
        """Too few outputs for a panel (DLRM's last layer has one): a dot product per output."""
        return self.n < PANEL

    @property
    def parallel(self) -> bool:
        return self.m * self.k * self.n >= SERIAL_MACS

    def packable(self, bn: int = PANEL) -> bool:
        return self.n % bn == 0

    @property
    def name(self) -> str:
        return f"dense_m{self.m}_k{self.k}_n{self.n}{'_relu' if self.relu else ''}"


@dataclass(frozen=True)
class DenseConfig:
    """The packed GEMM's knobs, chosen per machine and shape by `dlrm tune --schedule custom`:
    panel width bn (a multiple of the vector lanes), rows per register tile mr (0: the most
    that divide the batch and fit the registers), tiles in parallel or on one thread (None: by
    the layer's size)."""

    bn: int = PANEL
    mr: int = 0
    parallel: bool | None = None

    def rows(self, shape: DenseShape, vector_lanes: int) -> int:
        return self.mr or row_block(shape.m, vector_lanes)

    def threads(self, shape: DenseShape) -> bool:
        return shape.parallel if self.parallel is None else self.parallel


def row_block(m: int, vector_lanes: int) -> int:
    """Rows per register tile: mr x (bn / lanes) accumulators must fit the vector registers
    (32 with AVX-512, 16 with AVX2) next to the panel loads and the broadcast."""
    limit = 12 if vector_lanes >= 16 else 3
    for mr in range(min(limit, m), 0, -1):
        if m % mr == 0:
            return mr
    return 1


REGISTERS = {16: 32, 8: 16}  # vector registers (AVX-512, AVX2): 3 x 32 spilled on AVX2 and ran at half speed


def tallest_rows(m: int, bn: int, vector_lanes: int) -> int:
    """The most rows per register tile whose accumulators, one panel load and the broadcast
    fit the vector registers, whether or not they divide M (then the last tile is cut short):
    6 x 16 on AVX2, which ran 1.18x 2 x 32 (the largest dividing tile) on Zen 3."""
    vectors = max(1, bn // vector_lanes)
    return min(m, max(1, (REGISTERS.get(vector_lanes, 16) - vectors - 1) // vectors))


def pack_func(n: int, k: int, bn: int = PANEL):
    """W[N, K] (ONNX Gemm transB layout) -> panels Wp[N/bn, K, bn]; runs once, at build time."""
    from tvm import te

    w = te.placeholder((n, k), "float32", name="w")
    wp = te.compute((n // bn, k, bn), lambda j, kk, i: w[j * bn + i, kk], name="pack")
    return te.create_prim_func([w, wp]).with_attr("global_symbol", pack_name(n, k, bn))


def pack_name(n: int, k: int, bn: int = PANEL) -> str:
    return f"pack_n{n}_k{k}_p{bn}"


def dense_compute(shape: DenseShape, bn: int = PANEL):
    """The packed dense as a TensorIR function (x, Wp, b) -> out, before scheduling."""
    from tvm import te, tirx

    m, k, n = shape.m, shape.k, shape.n
    x = te.placeholder((m, k), "float32", name="x")
    wp = te.placeholder((n // bn, k, bn), "float32", name="wp")
    b = te.placeholder((n,), "float32", name="b")
    r = te.reduce_axis((0, k), name="r")
    acc = te.compute((m, n), lambda i, j: te.sum(x[i, r] * wp[j // bn, r, j % bn], axis=r), name="dense")
    if shape.relu:
        out = te.compute((m, n), lambda i, j: tirx.max(acc[i, j] + b[j], tirx.const(0, "float32")), name="epilogue")
    else:
        out = te.compute((m, n), lambda i, j: acc[i, j] + b[j], name="epilogue")
    return te.create_prim_func([x, wp, b, out])


def dense_func(shape: DenseShape, vector_lanes: int = 16, config: DenseConfig = DenseConfig()):
    """The scheduled kernel: parallel over (panel, row block) unless the layer is tiny; per tile the accumulator lives
    in registers ('local'), K runs innermost-but-two, the bn lanes are vectorised, the mr rows
    unrolled; the epilogue writes the tile out once."""
    from tvm import s_tir

    sch = s_tir.Schedule(dense_compute(shape, config.bn))
    register_tiles(sch, config.rows(shape, vector_lanes), config.bn, bool(config.threads(shape)))
    return sch.mod["main"].with_attr("global_symbol", shape.name)


def register_tiles(sch, mr: int, bn: int, parallel: bool) -> None:
    """The packed GEMM's schedule on blocks "dense" (the reduction) and "epilogue": mr x bn
    accumulator tiles in registers, K inside the tile loop, the tiles in parallel when asked."""
    dense = sch.get_sblock("dense")
    epilogue = sch.get_sblock("epilogue")
    i, j, r = sch.get_loops(dense)
    io, ii = sch.split(i, [None, mr])
    jo, ji = sch.split(j, [None, bn])
    sch.reorder(jo, io, r, ii, ji)
    sch.set_scope(dense, 0, "local")
    sch.reverse_compute_at(epilogue, io)
    tiles = sch.fuse(jo, io)
    if parallel:
        sch.parallel(tiles)
    sch.vectorize(ji)
    sch.unroll(ii)
    init = sch.decompose_reduction(dense, r)
    for block in (init, epilogue):
        sch.vectorize(sch.get_loops(block)[-1])


def narrow_dense_func(shape: DenseShape, lanes: int = 16):
    """out[i, j] = act(x[i, :] . w[j, :] + b[j]) for a layer with fewer outputs than a panel: W's
    rows are already contiguous along K, so no packing; lanes-wide partial sums over K, folded
    once per output; rows in parallel. (The generic lowering ran it as a scalar loop.)"""

    m, k, n = shape.m, shape.k, shape.n
    main = k - k % lanes
    value = "acc[0] + b[j]"
    tail = "" if main == k else (f"\n            for r in range({main}, {k}):\n"
                                 f"                acc[0] = acc[0] + x[i, r] * w[j, r]")
    source = f'''
@T.prim_func
def {shape.name}(x: T.Buffer(({m}, {k}), "float32"), w: T.Buffer(({n}, {k}), "float32"),
                 b: T.Buffer(({n},), "float32"), out: T.Buffer(({m}, {n}), "float32")):
    T.func_attr({{"tirx.noalias": True}})
    for i in {"T.parallel" if shape.parallel else "range"}({m}):
        acc = T.decl_buffer(({lanes},), "float32")
        for j in range({n}):
            for l in T.vectorized({lanes}):
                acc[l] = T.float32(0)
            for r0 in range({main // lanes}):
                for l in T.vectorized({lanes}):
                    acc[l] = acc[l] + x[i, r0 * {lanes} + l] * w[j, r0 * {lanes} + l]
{tree_sum(lanes, 12)}{tail}
            out[i, j] = {f"T.max({value}, T.float32(0))" if shape.relu else value}
'''
    return parse_prim_func(source, shape.name)
