// Streaming chat (`"stream": true`, SSE) at a fixed arrival rate; each answer must end with [DONE].
// k6 run -e BASE_URL=http://127.0.0.1:8080 -e RATE=500 -e DURATION=20s load-tests/stream.js
// http_req_duration here is the time to the end of the stream. k6 cannot see when chunks arrive:
// time to first token and the gaps between chunks are measured by scripts/bench.py's own client.
import * as lib from "./lib.js";

export const options = lib.options("stream");
const body = lib.chatBody(true);

export default function () {
  lib.chat(body, true);
}

export function handleSummary(data) {
  return lib.handleSummary(data);
}
