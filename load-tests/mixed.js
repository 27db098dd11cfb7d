// A mixed workload at a fixed arrival rate, each request drawn at random:
//   STREAM_SHARE (default 0.2)  streaming chat
//   LARGE_SHARE  (default 0.1)  non-stream chat with a large context (LARGE_KB KiB system prompt,
//                               default 96: above Tollgate's 64 KiB replay buffer)
//   the rest                    small non-stream chat
// k6 run -e BASE_URL=http://127.0.0.1:8080 -e RATE=500 -e DURATION=20s load-tests/mixed.js
import * as lib from "./lib.js";

export const options = lib.options("mixed");

const streamShare = Number(__ENV.STREAM_SHARE || 0.2);
const largeShare = Number(__ENV.LARGE_SHARE || 0.1);
const context = "All work and no play makes Jack a dull boy. ".repeat(
  Math.ceil((Number(__ENV.LARGE_KB || 96) * 1024) / 44),
);

const small = lib.chatBody(false);
const streamed = lib.chatBody(true);
const large = lib.chatBody(false, [
  { role: "system", content: context },
  { role: "user", content: "Summarize the above." },
]);

export default function () {
  const x = Math.random();
  if (x < streamShare) lib.chat(streamed, true, { kind: "stream" });
  else if (x < streamShare + largeShare) lib.chat(large, false, { kind: "large" });
  else lib.chat(small, false, { kind: "small" });
}

export function handleSummary(data) {
  return lib.handleSummary(data);
}
