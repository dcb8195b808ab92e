"""One put or task from start to end: engine, images, the compose command, reports and teardown.

The only sub-package that knows the order of things. `put` drives config → engine → images →
compose → response; `task` adds the outputs a put cannot have (log files, reports, artifacts, the
cache). The compose command itself (`compose`), its errors, JUnit reports and reading files out of
containers live here too. Imports every other sub-package; none of them imports it.
"""
