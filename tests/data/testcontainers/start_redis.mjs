// Starts Redis through Testcontainers for Node, as an integration suite does, and talks to it
// (PING over a plain socket: no Redis client package needed). REDIS_IMAGE names the image.
import net from "node:net";
import { GenericContainer, Wait } from "testcontainers";

const image = process.env.REDIS_IMAGE ?? "redis:7";
const container = await new GenericContainer(image)
  .withExposedPorts(6379)
  .withWaitStrategy(Wait.forLogMessage("Ready to accept connections"))
  .start();
const host = container.getHost();
const port = container.getMappedPort(6379);
const reply = await new Promise((resolve, reject) => {
  const socket = net.createConnection({ host, port }, () => socket.write("PING\r\n"));
  socket.once("data", (data) => {
    resolve(data.toString().trim());
    socket.end();
  });
  socket.once("error", reject);
});
console.log(`testcontainers (node): ${image} at ${host}:${port} says ${reply}`);
await container.stop();
