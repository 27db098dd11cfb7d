// Non-stream (or, with STREAM=1, streaming) chat at a fixed arrival rate.
// k6 run -e BASE_URL=http://127.0.0.1:8080 -e RATE=500 -e DURATION=20s load-tests/chat.js
// Environment: see lib.js. scripts/bench.sh runs this at a ladder of rates against every target.
import * as lib from "./lib.js";

const stream = __ENV.STREAM === "1";
export const options = lib.options("chat");
const body = lib.chatBody(stream);

export default function () {
  lib.chat(body, stream);
}

export function handleSummary(data) {
  return lib.handleSummary(data);
}
