"""fedrec.simulations.audit: the privacy audit of a run, for the officer who signs it off.

report      audit.json and report.html: each protection with its evidence
protections the summary's statuses, and what the protections do not cover
ledger      ε recomputed from the recorded rounds, with the run's own accountant
evidence    what the server received (names and shapes), checked against the shared group
at_rest     the run's files on disk: sealed or not
interaction interaction inference by the server (uploads, masked uploads, sums, released)
attribute   user-attribute inference from an update
membership  membership inference against the released model (loss, rank, LiRA)
canary      the one-run ε lower bound from inserted canary users
rerun       a run replayed in-process from its config (what the attacks observe)
stats       ROC, AUC, TPR at FPR, bootstrap intervals, the one-run ε lower bound
compare     runs side by side (``fedrec audit compare``)
cli         ``fedrec audit report|compare``
"""

__all__ = [
    "at_rest",
    "attribute",
    "canary",
    "cli",
    "compare",
    "evidence",
    "interaction",
    "ledger",
    "membership",
    "protections",
    "report",
    "rerun",
    "stats",
]
