"""QAT fx graph → rq IR (used by ``rq.convert``)."""

from rqcompile.translate.from_fx import supported_ops, translate

__all__ = ["supported_ops", "translate"]
