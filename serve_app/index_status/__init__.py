"""GET /v1/index: what the index holds for the caller, its versions and the last ingest.
protocol (the models), serving (what each role sees), api_router (the route)."""
