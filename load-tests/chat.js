// Non-stream (or, with STREAM=1, streaming) chat at a fixed arrival rate.
// k6 run -e BASE_URL=http://127.0.0.1:8080 -e RATE=500 -e DURATION=20s load-tests/chat.js
import http from "k6/http";
import { check } from "k6";

const stream = __ENV.STREAM === "1";

export const options = {
  discardResponseBodies: false,
  scenarios: {
    chat: {
      executor: "constant-arrival-rate",
      rate: Number(__ENV.RATE || 200),
      timeUnit: "1s",
      duration: __ENV.DURATION || "10s",
      preAllocatedVUs: Number(__ENV.VUS || 64),
      maxVUs: Number(__ENV.MAX_VUS || 512),
    },
  },
  thresholds: { checks: ["rate==1"] },
};

const body = JSON.stringify({
  model: __ENV.MODEL || "gpt-4o-mini",
  stream,
  messages: [{ role: "user", content: "What is the capital of France?" }],
});
const params = { headers: { "content-type": "application/json", authorization: "Bearer load-test" } };

export default function () {
  const r = http.post(`${__ENV.BASE_URL || "http://127.0.0.1:8080"}/v1/chat/completions`, body, params);
  check(r, {
    "status 200": (x) => x.status === 200,
    "has an answer": (x) => (stream ? x.body.includes("[DONE]") : x.body.includes("sim reply to")),
  });
}
