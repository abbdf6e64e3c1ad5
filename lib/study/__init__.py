"""The user study of the AIG paper (A.4, Fig. 6-8, Fig. 10): a Flask app that shows a run's stored samples side by
side and records votes in SQLite, and the analysis of the votes.

    python -m lib.study serve results/<run> --pairs aig:power:2,draft     # the app (waitress)
    python -m lib.study analyse results/<run>/study/votes.sqlite           # tables and figures, headless

Modules: db (the votes database), catalog (the run's samples as PNG, paired seeds), app (Flask + waitress),
analysis (Fig. 6-8 numbers), figures, simulate (SIMULATED votes for tests), load (a load test of a served app).
The package's __init__ imports nothing, so the analysis loads without Flask or torch.
"""
