"""compose-env: a Concourse resource that runs docker compose against loaded image tarballs.

Layout (docs/architecture.md has the map): `protocol` is the entry point for check, in, out and
task; `run` drives a put; `engine`, `images` and `config` do its parts; the top-level modules
(`errors`, `console`, `signals`, `redaction`, `report`, `version`, `process`, `concurrency`,
`logtail`) are leaves that any of them may import.
"""
