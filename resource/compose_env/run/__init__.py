"""One put or task from start to end: engine, images, the compose command, reports and teardown.

The only sub-package that knows the order of things. `put` drives config → engine → images →
compose → response; `task` adds the outputs a put cannot have (log files, reports, artifacts, the
cache). The compose command itself lives here too: `command` (what the user's command is),
`project` (running it), `logs` (capturing its output), `outcome` (what it came to), its errors,
JUnit reports and reading files out of containers. Imports every other sub-package; none of them imports it.
"""
