"""fedrec.simulations: running federations on one machine, and the ``fedrec`` command line.

cli         the ``fedrec`` command line
runner      ``fedrec simulate`` through Flower's simulation engine; scenario files
engine      fixes for the simulation engine's in-memory link (applied by the runner)
inprocess   a seeded, paired federation in one process (research comparisons)
poisoning   malicious devices promoting target items (``poison-fraction``)
central     the centralized references (``fedrec train-central``)
faithfulness  do the device's explanations name what lifts a score? (benchmarks/explain.py)
new_users   HR@10 by the history a device's row is fitted on (benchmarks/new_users.py)
trained     a federation's trained models and the users they are measured on (benchmarks)
prepare     ``fedrec data prepare``: a de-identified copy of a data set
plots       quality and loss figures of a run
"""

__all__ = [
    "central",
    "cli",
    "engine",
    "faithfulness",
    "inprocess",
    "new_users",
    "plots",
    "poisoning",
    "prepare",
    "runner",
    "trained",
]
