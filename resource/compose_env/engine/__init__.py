"""The Docker engine a put runs against: an inner containerd + dockerd started in this container, or a remote one.

Owns everything about the worker's container that the engine needs: privileges, mounts, cgroup
placement and sweeping, network settings, the data root and storage driver, the checks that keep
dockerd on the store `images.layerstore` writes into, the task cache, and stopping it all again.
Imports `config` and the top-level leaves; never `images` or `run`.
"""
