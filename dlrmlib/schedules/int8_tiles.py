"""The int8 GEMMs' knobs, one scheme for the three instruction sets (AVX2, VNNI, AMX).

Every int8 Dense kernel keeps an mr x nb block of accumulators over the whole K loop and runs its
blocks in parallel or on one thread. The knobs, as `dlrm tune --schedule custom --precision int8`
measures them and a kernel log records them (dlrmlib.schedules.knobs):
- `mr`: rows per register tile (AVX2, VNNI) or 16-row AMX tiles per task,
- `nb`: 8-wide (AVX2) or 16-wide (VNNI) output panels, or 16-column AMX tiles per task,
- `parallel`: blocks in parallel, on one thread, or (None) by the layer's size.
0 / None keep today's rules (avx2_int8_tile, reduced.int8_tile, amx.amx_blocks). The kernel
name says the instruction set and operands (`avx2_int8_s16_dense_...`, `int8_dense_...` for
VNNI, `amx_int8_dense_...`), so an fp32 record, another instruction set's or other operands'
never stands in for one of them. Tile shapes change only the loop blocking: the integer sums,
and so the outputs, are the same whatever the knobs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from dlrmlib.schedules.amx import TILE, amx_blocks, amx_int8_dense_func
from dlrmlib.schedules.avx2_int8 import DEFAULT_OPERANDS, LANES, MAX_ACCUMULATORS, avx2_int8_dense_func, avx2_int8_tile
from dlrmlib.schedules.dense import SERIAL_MACS, DenseShape
from dlrmlib.schedules.reduced import MAX_TILE_VECTORS, VNNI_LANES, int8_dense_func, int8_tile

ISAS = ("avx2", "avx512_vnni", "amx_int8")
KNOBS = ("mr", "nb", "parallel")
PREFIXES = ("avx2_int8_", "int8_", "amx_int8_")  # the int8 GEMMs' kernel names start so
BOTH_THREADINGS_BELOW = 16 * SERIAL_MACS  # as the fp32 kernels: smaller layers also try one thread
YMM, ZMM = 16, 32  # vector registers: accumulators, weight vectors and the broadcast share them


@dataclass(frozen=True)
class Int8Config:
    mr: int = 0
    nb: int = 0
    parallel: bool | None = None


def is_int8_kernel(name: str) -> bool:
    return name.startswith(PREFIXES)


def int8_kernel_name(shape: DenseShape, isa: str, operands: str | None = DEFAULT_OPERANDS) -> str:
    """The GEMM's name in the library and in a kernel log."""
    if isa == "avx2":
        return f"avx2_int8_{operands or DEFAULT_OPERANDS}_{shape.name}"
    return f"{'amx_' if isa == 'amx_int8' else ''}int8_{shape.name}"


def int8_tile_rule(shape: DenseShape, isa: str, operands: str | None = DEFAULT_OPERANDS,
                   config: Int8Config = Int8Config()) -> tuple[int, int]:
    """(mr, nb) a build uses: the config's where given, else today's rules (checked to fit)."""
    if isa == "avx2":
        return avx2_int8_tile(shape, config.mr, config.nb, operands or DEFAULT_OPERANDS)
    if isa == "amx_int8":
        return amx_blocks(shape, config.mr, config.nb)
    return int8_tile(shape, config.mr, config.nb)


def int8_gemm_func(shape: DenseShape, isa: str, operands: str | None = DEFAULT_OPERANDS,
                   config: Int8Config = Int8Config()):
    """The GEMM PrimFunc of this instruction set with these knobs."""
    if isa == "avx2":
        return avx2_int8_dense_func(shape, config.mr, config.nb, operands or DEFAULT_OPERANDS, config.parallel)
    if isa == "amx_int8":
        return amx_int8_dense_func(shape, config.mr, config.nb, config.parallel)
    return int8_dense_func(shape, config.mr, config.nb, config.parallel)


def _tiles(shape: DenseShape, isa: str, operands: str | None) -> list[tuple[int, int]]:
    """(mr, nb) pairs that divide the layer, keep the accumulators, the nb weight vectors and the
    broadcast (and AVX2 u8s8's ones) in registers, and have enough independent accumulators to
    hide the multiply's latency."""
    if isa == "amx_int8":
        return [(rb, cb) for rb in (1, 2) for cb in (1, 2) if shape.m % (rb * TILE) == 0 and shape.n % (cb * TILE) == 0]
    avx2 = isa == "avx2"
    panels = shape.n // (LANES if avx2 else VNNI_LANES)
    accumulators = MAX_ACCUMULATORS if avx2 else MAX_TILE_VECTORS
    registers = YMM - (2 if avx2 and operands == "u8s8" else 1) if avx2 else ZMM - 1
    least = 4 if avx2 else 8
    found = []
    for nb in (1, 2, 3, 4):
        if panels % nb:
            continue
        for mr in range(1, min(shape.m, accumulators) + 1):
            if shape.m % mr == 0 and mr * nb <= accumulators and mr * nb + nb <= registers and \
                    mr * nb >= min(least, shape.m * nb):
                found.append((mr, nb))
    return found


def int8_candidates(shape: DenseShape, isa: str, operands: str | None = DEFAULT_OPERANDS) -> list[dict]:
    """Every tile that fits, with the default rule's always among them; one thread as well as all
    of them for small layers."""
    tiles = _tiles(shape, isa, operands)
    default = int8_tile_rule(shape, isa, operands)
    tiles = tiles if default in tiles else [default, *tiles]
    threads = (None,) if shape.m * shape.k * shape.n >= BOTH_THREADINGS_BELOW else (True, False)
    return [asdict(Int8Config(mr, nb, parallel)) for mr, nb in tiles for parallel in threads]


def is_default_int8(shape: DenseShape, isa: str, operands: str | None, config: dict) -> bool:
    """Whether a config is what a build uses without a record."""
    tile = (config.get("mr", 0), config.get("nb", 0))
    return tile == int8_tile_rule(shape, isa, operands) and config.get("parallel") in (None, shape.parallel)


def int8_tiles_used(seen: dict, configs: dict, operands: str | None = DEFAULT_OPERANDS) -> dict:
    """The manifest's record of an int8 build's GEMMs: layer -> kernel, mr, nb, parallel and
    where they came from (`seen`: the rewrite's kernels; `configs`: the kernel log's knobs)."""
    used = {}
    for layer, (kind, shape, isa) in sorted(seen.items()):
        if kind != "int8":
            continue
        name = int8_kernel_name(shape, isa, operands)
        config = Int8Config(**configs.get(name, {}))
        mr, nb = int8_tile_rule(shape, isa, operands, config)
        used[layer] = {"kernel": name, "mr": mr, "nb": nb,
                       "parallel": shape.parallel if config.parallel is None else config.parallel,
                       "knobs": "kernel log" if name in configs else "default rules"}
    return used
