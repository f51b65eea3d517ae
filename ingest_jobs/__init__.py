"""The ingest job: `python -m ingest_jobs.index --source DIR` (also through `ray job submit`)."""
