"""The OpenAI-compatible chat-completions API: protocol (request and response models), serving
(the logic, on top of QueryService) and api_router (the routes)."""
