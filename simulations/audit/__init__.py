"""The privacy audit of a run (``fedrec audit``).

Modules: ``ledger`` (ε recomputed from the recorded rounds), ``evidence`` (what the server
received, checked against the shared model), ``interaction`` (interaction inference by the
server, on uploads, masked uploads, cohort sums and the released noised sums), ``protections``
(the summary's statuses and what is not covered), ``report`` (audit.json and report.html).
The statistics (ROC, AUC, TPR at FPR, bootstrap intervals, the one-run ε lower bound) are
``fedrec.common.audit_stats``.
"""
