"""fedrec.simulations: the researcher's side — federations on one machine and what measures them.

cli         ``fedrec simulate``, ``train-central``, ``data``, ``catalog``, ``features``
runner      ``fedrec simulate`` through Flower's simulation engine
engine      fixes for the simulation engine's in-memory link (applied by the runner)
inprocess   a seeded, paired federation in one process (research comparisons)
poisoning   malicious devices promoting target items (``poison-fraction``)
central     the centralized references (``fedrec train-central``)
training    the centralized trainer's epoch and evaluation loops
baselines   matrix factorization and MostPopular, for the centralized references
prepare     ``fedrec data prepare``: a de-identified copy of a data set
anonymize   pseudonyms, generalization, k-anonymity (what prepare applies)
download    public data sets, sha256-checked (``fedrec data download``)
text        item text features from a pretrained encoder (``fedrec features embed``)
faithfulness  do the device's explanations name what lifts a score? (benchmarks/explain.py)
new_users   HR@10 by the history a device's row is fitted on (benchmarks/new_users.py)
trained     a federation's trained models and the users they are measured on (benchmarks)
audit/      the privacy audit of a run (``fedrec audit``)
"""

__all__ = [
    "anonymize",
    "audit",
    "baselines",
    "central",
    "cli",
    "download",
    "engine",
    "faithfulness",
    "inprocess",
    "new_users",
    "poisoning",
    "prepare",
    "runner",
    "text",
    "trained",
    "training",
]
