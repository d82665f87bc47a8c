"""Tuning: MetaSchedule over the model's kernels (metaschedule, session, workers, rpc) and the
hand-written kernels' knobs (kernels). Kept light: MetaSchedule's worker processes import it."""

DEFAULT_TRIALS = 3000  # the classic budget of the workflow this repository reproduces
