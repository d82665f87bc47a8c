"""The hand-written packed GEMM (dlrmlib.schedules.dense) as a MetaSchedule design space.

`dense.py` writes one kernel per knob setting and `dlrm tune --schedule custom` measured each;
here the same structure is a schedule function over MetaSchedule's own Dense workloads (the
fused matmul + bias + activation kernels of the tuned build), whose knobs are MetaSchedule
decisions, so its evolutionary search, cost model, database, RPC runner and resumption tune
them like any other schedule:
- panel width (bn): `sample_categorical` over the vector-lane multiples that divide N,
- rows per register tile (mr): `sample_perfect_tile` on the batch rows (mutated by MutateTileSize),
  or, by a `sample_categorical` beside it, the tallest tile that fits the registers where it does
  not divide the batch (the last tile cut short: 6 x 16 on AVX2, the knob tuner's best on Zen 3),
- threads: `sample_perfect_tile` of the tiles into parallel jobs (all tiles in one job: one thread),
- unrolling: `sample_categorical` over MetaSchedule's explicit-unroll annotation.
Per tile: the mr x bn accumulator in registers ('local') over the whole K loop, bn lanes
vectorised, mr rows unrolled, the epilogue (bias, ReLU/sigmoid) applied while the tile is hot.
A workload this does not fit (a reduction that is not a 2-D matmul, N not a multiple of the
lanes, like the 1-wide last layer) gets `None`: MetaSchedule's default rules only.
"""
from __future__ import annotations

from dlrmlib.schedules.dense import tallest_rows

PANELS = (16, 32, 64)  # panel widths tried, the multiples of the vector lanes that divide N
MAX_ROWS = 16  # rows per register tile at most (mr x bn / lanes accumulators must fit registers)
UNROLL_STEPS = (0, 16, 64)
MAX_TILES_PER_JOB = 256
SPATIAL, REDUCE = 0, 2  # tirx.IterVar kinds (DataPar, CommReduce)  # MetaSchedule's explicit-unroll choices, as its default rule


def dense_shape(func) -> tuple[int, int, int] | None:
    """(M, K, N) when `func` is a Dense workload this space fits: one 2-D matmul reduction
    block (SSR) followed only by elementwise blocks, N a multiple of the smallest panel."""
    plan = _plan(func)
    return None if plan is None else plan[2]


def _plan(mod) -> tuple[str, list[str], tuple[int, int, int]] | None:
    """(matmul block, blocks after it, (M, K, N)), read on an untraced copy: the traced
    schedule then looks blocks up by name only, which replays on any copy of the workload
    (a recorded `get_child_blocks` would not, once postprocessing added a block)."""
    from tvm import s_tir

    sch = s_tir.Schedule(mod)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    kinds = [[int(iv.iter_type) for iv in sch.get(b).iter_vars] for b in blocks]
    reductions = [i for i, k in enumerate(kinds) if REDUCE in k]
    if len(reductions) != 1 or kinds[reductions[0]] != [SPATIAL, SPATIAL, REDUCE]:
        return None
    at = reductions[0]
    names = [sch.get(b).name_hint for b in blocks]
    loops = sch.get_loops(blocks[at])
    if at != 0 or len(loops) != 3 or any(REDUCE in k for k in kinds[at + 1:]):
        return None
    m, n, k = (int(sch.get(loop).extent) for loop in loops)
    return (names[at], names[at + 1:], (m, k, n)) if n % PANELS[0] == 0 else None


def written_decisions(m: int, n: int, mr: int, bn: int, parallel: bool) -> dict:
    """The decisions that make `dense_space` the custom build's kernel (rows per tile `mr`,
    panel `bn`, every tile its own parallel job or all on one thread, no explicit unrolling):
    the search's first trial of a Dense kernel."""
    tiles = -(-m // mr) * (n // bn)
    return {"rows": mr, "bn": bn, "jobs": [tiles, 1] if parallel else [1, tiles], "unroll": 0}


def knobs_of_trace(trace: list) -> dict | None:
    """The custom build's knobs (`bn`, `mr`, `parallel`) that a database record of this space
    says, from its trace as the JSON database stores it ([instructions, decisions]); None when
    the trace is not this space's, or its decisions are not knobs the custom build has (a job
    split between one thread and one tile per job, explicit unrolling)."""
    insts, decided = trace
    decisions = {index: value for index, value in decided}
    end = next((i for i, inst in enumerate(insts) if inst[0] == "EnterPostproc"), len(insts))
    sampled = {}  # what each sampled variable took, by its name in the trace
    panel = cut = unroll = None
    tiles = []
    for i, (kind, inputs, attrs, outputs) in enumerate(insts[:end]):
        if kind == "SampleCategorical" and i in decisions:
            candidates = [int(c) for c in attrs[0]]
            value = candidates[int(decisions[i])]
            sampled[outputs[0]] = value
            if candidates == list(UNROLL_STEPS):
                unroll = value
            elif candidates == [0, 1]:
                cut = value
            elif set(candidates) <= set(PANELS):
                panel = value
        elif kind == "SamplePerfectTile" and i in decisions:
            sampled.update(zip(outputs, (int(v) for v in decisions[i])))
            tiles.append([int(v) for v in decisions[i]])
    splits = [inputs for kind, inputs, _, _ in insts[:end] if kind == "Split"]
    local = any(kind == "SetScope" and list(attrs) == [0, "local"] for kind, _, attrs, _ in insts[:end])
    if panel is None or unroll is None or not local or len(splits) != 3 or not tiles:
        return None
    rows = splits[0][2]
    mr = sampled.get(rows) if isinstance(rows, str) else int(rows)  # a literal: the cut-short tallest tile
    jobs = tiles[-1]
    if mr is None or unroll != 0 or (cut == 1) != (len(tiles) == 1) or len(jobs) != 2:
        return None
    if jobs[0] != 1 and jobs[1] != 1:
        return None  # neither every tile its own job nor one thread
    return {"bn": panel, "mr": mr, "parallel": jobs[1] == 1 and jobs[0] > 1}


def _row_decisions(m: int, mr: int | None, tallest: int | None) -> tuple[int | None, list[int] | None] | None:
    """(cut-short choice, perfect-tile decision) that give `mr` rows per tile (None: sampled);
    None when no decision gives them (a tile that neither divides M nor is the cut-short
    `tallest`, None where the space has no cut-short tile)."""
    if mr is None:
        return None, None
    if m % mr == 0:
        return 0, [m // mr, mr]
    return (1, None) if mr == tallest else None


def dense_space(sch, lanes: int = 16, decisions: dict | None = None):
    """The schedule function (`ms.space_generator.ScheduleFn`): applies the packed-GEMM
    structure to `sch` in place, its knobs sampled (or, with `decisions`, as given:
    `written_decisions`). Returns None on a workload it does not fit."""
    plan = _plan(sch.mod)
    if plan is None:
        return None
    fixed = decisions or {}
    matmul_name, after, (m, _, n) = plan
    panels = [p for p in PANELS if n % p == 0 and p % lanes == 0] or [PANELS[0]]
    if "bn" in fixed and fixed["bn"] not in panels:
        return None
    root = sch.get_sblock("root")
    matmul = sch.get_sblock(matmul_name)
    for name in after[:-1]:  # bias, activation: one epilogue block
        sch.compute_inline(sch.get_sblock(name))
    epilogue = sch.get_sblock(after[-1]) if after else sch.cache_write(matmul, 0, "global")
    i, j, k = sch.get_loops(matmul)
    bn = sch.sample_categorical(panels, [1.0 / len(panels)] * len(panels),
                                decision=panels.index(fixed["bn"]) if "bn" in fixed else None)
    tallest = min(MAX_ROWS, tallest_rows(m, int(sch.get(bn)), lanes))
    # a cut-short tile over a single panel: TVM's verifier rejects the split of the fused tiles
    # loop (a non-affine binding), so there the space has only the tiles that divide M
    cuttable = m % tallest != 0 and n > int(sch.get(bn))
    rows = _row_decisions(m, fixed.get("rows"), tallest if cuttable else None)
    if rows is None:
        return None
    cut = cuttable and int(sch.get(sch.sample_categorical([0, 1], [0.5, 0.5], decision=rows[0])))
    mr = tallest if cut else sch.sample_perfect_tile(i, n=2, max_innermost_factor=min(MAX_ROWS, m), decision=rows[1])[1]
    io, ii = sch.split(i, [None, mr])  # a cut-short tile: the last one's rows predicated
    jo, ji = sch.split(j, [None, bn])
    sch.reorder(jo, io, k, ii, ji)
    sch.set_scope(matmul, 0, "local")
    sch.reverse_compute_at(epilogue, io, preserve_unit_loops=True)  # a fixed loop count: replayable
    tiles = sch.fuse(jo, io)
    jobs, _ = sch.split(tiles, sch.sample_perfect_tile(tiles, n=2, max_innermost_factor=MAX_TILES_PER_JOB,
                                                       decision=fixed.get("jobs")))
    sch.parallel(jobs)  # tiles per job: 1 (every tile its own job) ... all (one thread)
    sch.vectorize(ji)
    sch.unroll(ii)
    sch.decompose_reduction(matmul, k)
    sch.vectorize(sch.get_loops(epilogue)[-1])
    unroll = sch.sample_categorical(list(UNROLL_STEPS), [1.0 / len(UNROLL_STEPS)] * len(UNROLL_STEPS),
                                    decision=fixed.get("unroll"))
    sch.annotate(root, "meta_schedule.unroll_explicit", unroll)
    return sch


def gather_concat_plan(mod) -> tuple[list[str], int] | None:
    """(blocks, rank) when `mod` is the interaction's concatenation as the import writes it:
    only elementwise blocks (no reduction), the last one a reshape of a concatenation into
    (batch, features, dim). None otherwise."""
    from tvm import s_tir

    sch = s_tir.Schedule(mod)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    if not any(n.startswith("T_concat") for n in names):
        return None
    if any(REDUCE in [int(iv.iter_type) for iv in sch.get(b).iter_vars] for b in blocks):
        return None
    rank = len(sch.get_loops(blocks[-1]))
    return (names, rank) if rank >= 3 else None


def concat_space(sch):
    """The concatenation of the embeddings as the hand-written interaction kernel does it: one
    copy per input, not a chain of 27 selects per element. Inlined into the reshape, the feature
    loop unrolled (each copy then knows its input), the last axis vectorised; the batch rows
    split into parallel jobs by a `sample_perfect_tile` decision (one job: one thread)."""
    plan = gather_concat_plan(sch.mod)
    if plan is None:
        return None
    names, _ = plan
    for name in names[:-1]:
        sch.compute_inline(sch.get_sblock(name))
    loops = sch.get_loops(sch.get_sblock(names[-1]))
    jobs, _ = sch.split(loops[0], sch.sample_perfect_tile(loops[0], n=2, max_innermost_factor=MAX_TILES_PER_JOB))
    sch.parallel(jobs)
    for loop in loops[1:-1]:
        sch.unroll(loop)
    sch.vectorize(loops[-1])
    return sch
