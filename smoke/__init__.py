"""Contract smoke packs, the readiness audit and perf thresholds, against any base URL.

Never imports deploy/: usable on its own (`python -m smoke.cli`), and by the deploy gate.

    pack.py      pack files → validated Pack (PackError names file, check, field, fix)
    audit.py     the built-in readiness audit pack, from AuditSettings
    runner.py    run packs concurrently with httpx → PackResult
    perf.py      hot endpoints: N requests at concurrency C → percentiles vs thresholds
    report.py    the only printer: Rich table, plain lines, JSON lines, JUnit XML
    commands.py  run_smoke / run_perf (exit 0/1/2) and helpers for the deploy gate
    cli.py       Click commands `smoke` and `perf` to attach to the releasegate group
    config.py    the inventory's `smoke:` section (pydantic, embedded by deploy.inventory)
    model.py, expect.py, secrets.py, clock.py   values, expectation kinds, masking, time
"""
