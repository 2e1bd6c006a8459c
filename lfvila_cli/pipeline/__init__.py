"""The generic machinery of cached stages (docs/engineering.md §1–§2).

Nothing here knows any particular stage; the stages themselves are in ``lfvila_cli.stages``.

    artifacts.py  the content-addressed store: keys, manifests, atomic commits, refs
    locks.py      one process builds a given artifact at a time
    stage.py      the ``Stage`` contract, its config resolution and the result of running one
    ranks.py      multi-rank launches: ranks wait for rank 0's commit or its failure marker
    runner.py     ``run_stage``: key, reuse or build, commit
    chain.py      pipeline files and the rule that picks each stage's inputs
    status.py     whether each artifact is current, stale or unusable
"""
