"""Tuning: MetaSchedule over the model's kernels (metaschedule, session, workers, rpc) and the
hand-written kernels' knobs (kernels). Kept light: MetaSchedule's worker processes import it."""

DEFAULT_TRIALS = 3000  # the classic budget of the workflow this repository reproduces
MAX_TRIALS = 1_000_000  # MetaSchedule counts trials in 32-bit integers; at ~20 a minute this is a month
MAX_TRIALS_WHY = (" (MetaSchedule counts trials in 32-bit integers, and a million trials of even the tiny preset "
                  "take weeks)")
