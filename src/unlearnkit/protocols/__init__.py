"""Evaluation protocols: one per benchmark protocol (SalUn classification, TOFU, MUSE, WMDP, concept erasure).

A protocol owns its typed ``eval:`` section, how a model is evaluated on an experiment, how the result
compares with the retrained oracle, and what a table or a plot of its rows shows (headline keys, forget
keys, trade-off axes, caption). Suites, reports and the CLI ask the protocol; nothing else guesses what
a row measures from which metric keys it has.
"""

from unlearnkit.protocols.base import Protocol, Result, protocol_for

__all__ = ["Protocol", "Result", "protocol_for"]
