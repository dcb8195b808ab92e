"""Starts Redis through Testcontainers, as an integration suite does, and talks to it.

REDIS_IMAGE names the image (default `redis:7`, which the put loads from params.images).
TC_MODE: `use` (default) stops what it started, as a suite does; `hold` keeps Redis running
(for an abort to find); `leave` exits with Redis, a network and a volume still there.
"""

import os
import time

import redis
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

image = os.environ.get("REDIS_IMAGE", "redis:7")
mode = os.environ.get("TC_MODE", "use")
ready = LogMessageWaitStrategy("Ready to accept connections").with_startup_timeout(60)
container = (
    DockerContainer(image)
    .with_exposed_ports(6379)
    .with_volume_mapping("testcontainers-data", "/data", "rw")
    .waiting_for(ready)
)
if mode == "leave":
    Network().create()
container.start()
host, port = container.get_container_host_ip(), int(container.get_exposed_port(6379))
client = redis.Redis(host=host, port=port, socket_timeout=10)
client.set("greeting", "hello from testcontainers")
print(f"testcontainers: {image} at {host}:{port} says {client.get('greeting').decode()!r}", flush=True)
if mode == "hold":
    time.sleep(600)
if mode != "leave":
    container.stop()
