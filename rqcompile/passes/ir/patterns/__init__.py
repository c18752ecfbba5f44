"""Pattern matchers over rq IR functions, used by the fusion passes (analyses, not passes)."""
