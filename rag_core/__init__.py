"""Components shared by the ingest job (`ingest_jobs`) and the Serve app (`serve_app`).

Settings, the embedding model wrapper, parsing, chunking, the manifest, and access to the
versioned index (ChromaDB vectors + Parquet copy + current-version pointer + audit trail).
Everything here is plain Python, testable without Ray.
"""
