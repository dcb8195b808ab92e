"""What the user asked for: requests and task configuration → validated, typed, frozen values.

Owns the JSON schemas (`schemas/`, the one place defaults are written), their validation with
readable errors (`schema`), and the dataclasses the rest of the package reads (`model`).
Imports only the top-level leaves (`errors`); nothing here starts a process or touches a file
outside the put directory.
"""
