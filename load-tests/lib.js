// Shared pieces of the k6 scripts in this folder. Every script reads the same environment:
//   BASE_URL   target, e.g. http://127.0.0.1:8080                 (default http://127.0.0.1:8080)
//   MODEL      model name sent in the body                          (default gpt-4o-mini)
//   RATE       requests per second (constant-arrival-rate)          (default 200)
//   DURATION   how long, k6 duration syntax                         (default 10s)
//   VUS / MAX_VUS  pre-allocated / most virtual users               (default 100 / 2000)
//   HEADERS    extra request headers as a JSON object, e.g. '{"x-portkey-provider":"openai"}'
//   API_KEY    bearer token                                         (default load-test)
//   TIMEOUT    per-request timeout                                  (default 10s)
//   SUMMARY    if set, the end-of-test summary is written there as JSON (scripts/bench.py reads it)
import http from "k6/http";
import { check } from "k6";

export const baseUrl = __ENV.BASE_URL || "http://127.0.0.1:8080";
export const model = __ENV.MODEL || "gpt-4o-mini";

export function scenario(name) {
  return {
    [name]: {
      executor: "constant-arrival-rate",
      rate: Number(__ENV.RATE || 200),
      timeUnit: "1s",
      duration: __ENV.DURATION || "10s",
      preAllocatedVUs: Number(__ENV.VUS || 100),
      maxVUs: Number(__ENV.MAX_VUS || 2000),
      gracefulStop: __ENV.GRACEFUL_STOP || "5s",
    },
  };
}

export function options(name) {
  return {
    discardResponseBodies: false,
    scenarios: scenario(name),
    summaryTrendStats: ["avg", "min", "med", "p(90)", "p(95)", "p(99)", "p(99.9)", "max"],
    thresholds: { checks: ["rate==1"] },
  };
}

const params = {
  headers: Object.assign(
    { "content-type": "application/json", authorization: `Bearer ${__ENV.API_KEY || "load-test"}` },
    JSON.parse(__ENV.HEADERS || "{}"),
  ),
  timeout: __ENV.TIMEOUT || "10s",
};

export function chatBody(stream, messages) {
  return JSON.stringify({
    model,
    stream,
    messages: messages || [{ role: "user", content: "What is the capital of France?" }],
  });
}

// One chat request, checked: 200 and a complete answer (a streamed one ends with [DONE]).
export function chat(body, stream, tags) {
  const r = http.post(`${baseUrl}/v1/chat/completions`, body, Object.assign({ tags }, params));
  check(r, {
    "status 200": (x) => x.status === 200,
    "complete answer": (x) =>
      typeof x.body === "string" && (stream ? x.body.includes("[DONE]") : x.body.includes("sim reply to")),
  });
  return r;
}

function fmt(m, stat) {
  return m && m.values && m.values[stat] !== undefined ? m.values[stat].toFixed(3) : "-";
}

export function handleSummary(data) {
  const m = data.metrics;
  const d = m.http_req_duration;
  const line =
    `reqs=${m.http_reqs ? m.http_reqs.values.count : 0} rps=${fmt(m.http_reqs, "rate")} ` +
    `failed=${m.http_req_failed ? m.http_req_failed.values.passes : 0} ` +
    `dropped=${m.dropped_iterations ? m.dropped_iterations.values.count : 0} ` +
    `p50=${fmt(d, "med")}ms p99=${fmt(d, "p(99)")}ms max=${fmt(d, "max")}ms\n`;
  const out = { stdout: line };
  if (__ENV.SUMMARY) out[__ENV.SUMMARY] = JSON.stringify(data);
  return out;
}
