"""rq IR -> relax IRModule (the emitter)."""
