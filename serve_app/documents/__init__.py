"""The document API: upload, list and delete documents over HTTP, indexed by Ray jobs.
protocol (the models), serving (the logic, in the Ingress), api_router (the routes), registry
(state and staging on the head node) and actor (the registry as a detached Ray actor)."""
