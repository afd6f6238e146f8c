// Differential oracle: reads one JSON request per line on stdin, answers one JSON line each.
//   {"op": "split", "secret": hex, "parts": n, "threshold": m}  ->  {"shares": [hex, ...]}
//   {"op": "combine", "shares": [hex, ...]}                      ->  {"secret": hex}
const { split, combine } = require("shamir-secret-sharing");
const readline = require("node:readline");

const hex = (bytes) => Buffer.from(bytes).toString("hex");
const bytes = (text) => new Uint8Array(Buffer.from(text, "hex"));

const lines = readline.createInterface({ input: process.stdin });
const queue = [];
let busy = false;

async function answer(line) {
  const request = JSON.parse(line);
  try {
    if (request.op === "split") {
      const shares = await split(bytes(request.secret), request.parts, request.threshold);
      return { shares: shares.map(hex) };
    }
    if (request.op === "combine") {
      return { secret: hex(await combine(request.shares.map(bytes))) };
    }
    return { error: "unknown op" };
  } catch (error) {
    return { error: String(error) };
  }
}

async function drain() {
  if (busy) return;
  busy = true;
  while (queue.length > 0) {
    process.stdout.write(JSON.stringify(await answer(queue.shift())) + "\n");
  }
  busy = false;
}

lines.on("line", (line) => {
  queue.push(line);
  drain();
});
