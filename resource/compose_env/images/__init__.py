"""`params.images`: recognise each input's shape from its files and get it into the engine.

Owns image references, shape planning, the byte streams of archives (compression, tar, OCI layouts,
registry-image rootfs directories), `docker load` with its concurrency, the direct writes into
dockerd's overlay2 store (`layerstore`), and whether the images a compose command needs are present
(pulling the rest). Imports `config` and the top-level leaves; never `engine` or `run` (the put
hands it the engine's client and data root, the compose project its services).
"""
