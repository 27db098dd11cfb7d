//! End-to-end tests: a real sim on a free port, hit with a hand-written HTTP/1.1 client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{spawn_thread, SimConfig};

fn start() -> SocketAddr {
    start_with(SimConfig::default())
}

fn start_with(cfg: SimConfig) -> SocketAddr {
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    spawn_thread(SimConfig { listen, ..cfg }).unwrap()
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    /// The `data:` payloads of an SSE body.
    fn data(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(str::to_owned)
            .collect()
    }

    /// The `data:` payloads parsed as JSON (drops `[DONE]`).
    fn chunks(&self) -> Vec<Value> {
        self.data()
            .iter()
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    /// `(event name, data)` pairs of an SSE body.
    fn events(&self) -> Vec<(String, Value)> {
        self.text()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
                let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                (name.to_owned(), serde_json::from_str(data).unwrap())
            })
            .collect()
    }
}

fn raw_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: sim\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn parse(raw: &[u8]) -> Resp {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked")
    {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&raw_request(method, path, headers, body))
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    parse(&raw)
}

async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &Value) -> Resp {
    send(addr, "POST", path, headers, body.to_string().as_bytes()).await
}

async fn requests(addr: SocketAddr) -> Vec<Value> {
    let resp = send(addr, "GET", "/sim/requests", &[], b"").await;
    assert_eq!(resp.status, 200);
    resp.json()["requests"].as_array().unwrap().clone()
}

/// Polls `/sim/requests` until the last request's outcome is `want`.
async fn wait_outcome(addr: SocketAddr, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let last = requests(addr).await.pop().unwrap();
        if last["outcome"] == want || Instant::now() > deadline {
            assert_eq!(last["outcome"], want);
            return last;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn chat(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": text},
    ]})
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "units": {"enum": ["c", "f"]}},
            "required": ["city", "days", "units"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {
            "type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]}}},
    ])
}

#[tokio::test]
async fn chat_non_stream_shape_and_determinism() {
    let addr = start();
    let body = chat("What is the weather like in Paris today?");
    let resp = post(addr, "/v1/chat/completions", &[], &body).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let v = resp.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(v["system_fingerprint"], "fp_sim");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    let reply = "sim reply to: What is the weather like in Paris today?";
    assert_eq!(choice["message"]["content"], reply);
    assert!(choice["message"].get("tool_calls").is_none());
    // 9 + 40 chars -> 13 tokens; 11 words.
    let usage = &v["usage"];
    assert_eq!(usage["prompt_tokens"], 13);
    assert_eq!(usage["completion_tokens"], 11);
    assert_eq!(usage["total_tokens"], 24);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 0);

    let again = post(
        addr,
        "/v1/chat/completions",
        &[("x-sim-cached-tokens", "7")],
        &body,
    )
    .await;
    let again = again.json();
    assert_eq!(again["choices"], v["choices"]);
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"], 7);

    // Array content is joined; the reply keeps the first 100 characters.
    let long = "x".repeat(150);
    let parts = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hello"}, {"type": "text", "text": long}]}]});
    let v = post(addr, "/v1/chat/completions", &[], &parts).await.json();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, format!("sim reply to: hello {}", "x".repeat(94)));
}

#[tokio::test]
async fn chat_stream_framing() {
    let addr = start();
    let mut body = chat("one two three four five six");
    body["stream"] = json!(true);
    let resp = post(addr, "/v1/chat/completions", &[], &body).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    let text = resp.text();
    assert!(text.starts_with("data: {"));
    assert!(text.ends_with("data: [DONE]\n\n"));
    let chunks = resp.chunks();
    // role chunk + 4 content chunks + finish chunk.
    assert_eq!(chunks.len(), 6);
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-4o-mini");
        assert_eq!(c["system_fingerprint"], "fp_sim");
        assert!(c.get("usage").is_none());
        assert_eq!(c["id"], chunks[0]["id"]);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "");
    let joined: String = chunks[1..5]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(joined, "sim reply to: one two three four five six");
    assert_eq!(chunks[5]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");

    body["stream_options"] = json!({"include_usage": true});
    let resp = post(
        addr,
        "/v1/chat/completions",
        &[("x-sim-chunks", "2")],
        &body,
    )
    .await;
    assert_eq!(resp.data().last().unwrap(), "[DONE]");
    let chunks = resp.chunks();
    assert_eq!(chunks.len(), 5);
    for c in &chunks[..4] {
        assert_eq!(c["usage"], Value::Null);
        assert!(c.get("usage").is_some());
    }
    let last = &chunks[4];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 9);
    assert_eq!(last["usage"]["total_tokens"], 9 + 9);
}

#[tokio::test]
async fn chat_tool_calls() {
    let addr = start();
    let mut body = chat("weather?");
    body["tools"] = weather_tools();
    let v = post(addr, "/v1/chat/completions", &[], &body).await.json();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    let id = call["id"].as_str().unwrap();
    assert!(id.starts_with("call_") && id.len() == 29, "{id}");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "sim", "days": 1, "units": "c"}));
    let again = post(addr, "/v1/chat/completions", &[], &body).await.json();
    assert_eq!(again["choices"], v["choices"]);

    // Named choice; "none" disables tools.
    body["tool_choice"] = json!({"type": "function", "function": {"name": "get_time"}});
    let v = post(addr, "/v1/chat/completions", &[], &body).await.json();
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"utc\":true}"
    );
    body["tool_choice"] = json!("none");
    let v = post(addr, "/v1/chat/completions", &[], &body).await.json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // Parallel calls in a stream: own index each, arguments over several deltas.
    body["tool_choice"] = json!("auto");
    body["stream"] = json!(true);
    let resp = post(
        addr,
        "/v1/chat/completions",
        &[("x-sim-parallel-tools", "3")],
        &body,
    )
    .await;
    let chunks = resp.chunks();
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], Value::Null);
    let mut names = vec![String::new(); 3];
    let mut args = vec![String::new(); 3];
    let mut deltas = [0; 3];
    for c in &chunks[1..] {
        for tc in c["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = tc["index"].as_u64().unwrap() as usize;
            if let Some(n) = tc["function"]["name"].as_str() {
                assert!(tc["id"].as_str().unwrap().starts_with("call_"));
                names[i] = n.to_owned();
            }
            args[i].push_str(tc["function"]["arguments"].as_str().unwrap());
            deltas[i] += 1;
        }
    }
    assert_eq!(names, ["get_weather", "get_time", "get_weather"]);
    assert_eq!(args[1], "{\"utc\":true}");
    assert!(deltas.iter().all(|d| *d > 2), "{deltas:?}");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");

    // A tool result gets a text answer.
    let body = json!({"model": "m", "tools": weather_tools(), "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
    ]});
    let v = post(addr, "/v1/chat/completions", &[], &body).await.json();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "sim saw tool result: sunny, 21C"
    );
}

#[tokio::test]
async fn anthropic_messages() {
    let addr = start();
    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 100, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Say hi to everyone here"}], "stream": true});
    let resp = post(addr, "/v1/messages", &[("x-sim-cached-tokens", "5")], &body).await;
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = resp.events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let mut want = vec!["message_start", "content_block_start", "ping"];
    want.extend(["content_block_delta"; 4]);
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, want);
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str());
    }
    let start = &events[0].1["message"];
    assert_eq!(start["model"], "claude-haiku-4-5");
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["usage"]["cache_read_input_tokens"], 5);
    let text: String = events[3..7]
        .iter()
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "sim reply to: Say hi to everyone here");
    let delta = &events[8].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 8);
    assert_eq!(delta["usage"]["input_tokens"], 8);

    // Non-stream tool use, then the tool result.
    let tools = json!([{"name": "get_weather", "input_schema": {"type": "object",
        "properties": {"location": {"type": "string"}}, "required": ["location"]}}]);
    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 100, "tools": tools,
        "messages": [{"role": "user", "content": "weather?"}]});
    let v = post(addr, "/v1/messages", &[], &body).await.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["stop_reason"], "tool_use");
    let block = &v["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(block["input"], json!({"location": "sim"}));

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = post(addr, "/v1/messages", &[], &streamed).await.events();
    assert_eq!(events[1].1["content_block"]["type"], "tool_use");
    let partial: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(partial, "{\"location\":\"sim\"}");

    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 100, "tools": tools, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "rainy"}]},
    ]});
    let v = post(addr, "/v1/messages", &[], &body).await.json();
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["content"][0]["text"], "sim saw tool result: rainy");

    let v = post(addr, "/v1/messages/count_tokens", &[], &body)
        .await
        .json();
    assert!(v["input_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn embeddings_completions_models_azure() {
    let addr = start();
    let body = json!({"model": "text-embedding-3-small", "input": ["alpha", "beta", "alpha"]});
    let v = post(addr, "/v1/embeddings", &[], &body).await.json();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let vec = |i: usize| -> Vec<f64> {
        data[i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    assert_eq!(vec(0).len(), 64);
    let norm: f64 = vec(0).iter().map(|x| x * x).sum();
    assert!((norm - 1.0).abs() < 1e-3);
    assert_eq!(vec(0), vec(2));
    assert_ne!(vec(0), vec(1));
    assert_eq!(data[1]["index"], 1);
    assert_eq!(v["usage"]["prompt_tokens"], 5);

    let body = json!({"input": "alpha", "dimensions": 8, "encoding_format": "base64"});
    let v = post(addr, "/v1/embeddings", &[], &body).await.json();
    // 8 floats = 32 bytes = 44 base64 characters.
    assert_eq!(v["data"][0]["embedding"].as_str().unwrap().len(), 44);

    let body = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time"});
    let v = post(addr, "/v1/completions", &[], &body).await.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "sim completion: Once upon a time");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = post(addr, "/v1/completions", &[], &streamed).await;
    let text: String = resp
        .chunks()
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "sim completion: Once upon a time");
    assert_eq!(resp.data().last().unwrap(), "[DONE]");

    let v = send(addr, "GET", "/v1/models", &[], b"").await.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "model");

    let body = json!({"messages": [{"role": "user", "content": "hi"}]});
    let path = "/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21";
    let v = post(addr, path, &[], &body).await.json();
    assert_eq!(v["model"], "my-gpt");
    assert_eq!(v["choices"][0]["message"]["content"], "sim reply to: hi");
    let last = requests(addr).await.pop().unwrap();
    assert_eq!(last["path"], "/openai/deployments/my-gpt/chat/completions");
    assert_eq!(last["query"], "api-version=2024-10-21");
}

#[tokio::test]
async fn errors() {
    let addr = start();
    let resp = post(addr, "/v2/nothing", &[], &json!({})).await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.json()["error"]["code"], "not_found");
    let resp = send(addr, "POST", "/v1/chat/completions", &[], b"{not json").await;
    assert_eq!(resp.status, 400);
    let v = resp.json();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid JSON"));
    let resp = send(addr, "GET", "/v1/chat/completions", &[], b"").await;
    assert_eq!(resp.status, 405);
    let resp = post(
        addr,
        "/v1/chat/completions",
        &[("x-sim-fault", "bogus")],
        &chat("x"),
    )
    .await;
    assert_eq!(resp.status, 400);
}

#[tokio::test]
async fn status_faults() {
    let addr = start();
    let resp = post(
        addr,
        "/v1/chat/completions",
        &[("x-sim-fault", "429")],
        &chat("x"),
    )
    .await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after"), Some("1"));
    let v = resp.json();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(v["error"]["message"].is_string());
    assert_eq!(requests(addr).await.pop().unwrap()["outcome"], "fault:429");

    let body = json!({"model": "claude-fault-429", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    let resp = post(addr, "/v1/messages", &[], &body).await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after"), Some("1"));
    let v = resp.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");

    for (fault, status) in [("500", 500), ("502", 502), ("503", 503)] {
        let mut body = chat("x");
        body["model"] = json!(format!("sim-fault-{fault}"));
        let resp = post(addr, "/v1/chat/completions", &[], &body).await;
        assert_eq!(resp.status, status);
        assert_eq!(resp.json()["error"]["type"], "server_error");
    }

    let resp = post(
        addr,
        "/v1/embeddings",
        &[("x-sim-fault", "html")],
        &json!({"input": "x"}),
    )
    .await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("content-type"), Some("text/html"));
    assert_eq!(
        resp.text(),
        "<html><body><h1>502 Bad Gateway</h1></body></html>"
    );
    assert_eq!(requests(addr).await.pop().unwrap()["outcome"], "fault:html");

    let resp = post(
        addr,
        "/v1/chat/completions",
        &[("x-sim-fault", "midstream")],
        &chat("x"),
    )
    .await;
    assert_eq!(resp.status, 500);
}

#[tokio::test]
async fn reset_and_stall() {
    let addr = start();
    let mut body = chat("x");
    body["model"] = json!("gpt-4o-mini-fault-reset");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&raw_request(
        "POST",
        "/v1/chat/completions",
        &[],
        body.to_string().as_bytes(),
    ))
    .await
    .unwrap();
    let mut buf = Vec::new();
    let err = s.read_to_end(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(buf.is_empty());
    assert_eq!(
        requests(addr).await.pop().unwrap()["outcome"],
        "fault:reset"
    );

    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = raw_request(
        "POST",
        "/v1/chat/completions",
        &[("x-sim-fault", "stall")],
        b"{}",
    );
    s.write_all(&req).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
    assert!(read.is_err(), "stall answered: {read:?}");
    assert_eq!(
        requests(addr).await.pop().unwrap()["outcome"],
        "fault:stall"
    );
}

#[tokio::test]
async fn midstream_and_trickle() {
    let addr = start();
    let mut body = chat("a b c d e f g h");
    body["stream"] = json!(true);
    let resp = post(
        addr,
        "/v1/chat/completions",
        &[("x-sim-fault", "midstream")],
        &body,
    )
    .await;
    assert_eq!(resp.status, 200);
    let data = resp.data();
    // role chunk, 2 content chunks, error.
    assert_eq!(data.len(), 4);
    let err: Value = serde_json::from_str(&data[3]).unwrap();
    assert_eq!(err["error"]["code"], "midstream");
    assert!(!resp.text().contains("[DONE]"));
    assert_eq!(
        requests(addr).await.pop().unwrap()["outcome"],
        "fault:midstream"
    );

    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = raw_request(
        "POST",
        "/v1/chat/completions",
        &[("x-sim-fault", "trickle")],
        chat("hi").to_string().as_bytes(),
    );
    s.write_all(&req).await.unwrap();
    let started = Instant::now();
    let mut raw = Vec::new();
    let mut reads = 0;
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        reads += 1;
        raw.extend_from_slice(&buf[..n]);
    }
    let resp = parse(&raw);
    assert_eq!(
        resp.json()["choices"][0]["message"]["content"],
        "sim reply to: hi"
    );
    assert!(reads > 5, "{reads} reads");
    let pieces = resp.body.len().div_ceil(16) as u32;
    assert!(started.elapsed() >= Duration::from_millis(20) * (pieces - 1));
    assert_eq!(
        requests(addr).await.pop().unwrap()["outcome"],
        "fault:trickle"
    );
}

#[tokio::test]
async fn request_log() {
    let addr = start_with(SimConfig {
        history: 3,
        ..SimConfig::default()
    });
    let big = "y".repeat(1 << 20);
    let body = chat(&big).to_string();
    let resp = send(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("X-Trace", "abc")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 200);
    let reqs = requests(addr).await;
    let last = reqs.last().unwrap();
    assert_eq!(last["method"], "POST");
    assert_eq!(last["path"], "/v1/chat/completions");
    assert_eq!(last["query"], "");
    assert_eq!(last["headers"]["x-trace"], "abc");
    assert_eq!(last["body_len"], body.len());
    assert_eq!(
        last["body"]["messages"][1]["content"]
            .as_str()
            .unwrap()
            .len(),
        1 << 20
    );
    assert_eq!(last["outcome"], "ok");

    for i in 0..4 {
        post(addr, "/v1/chat/completions", &[], &chat(&format!("n{i}"))).await;
    }
    let reqs = requests(addr).await;
    assert_eq!(reqs.len(), 3);
    let ids: Vec<u64> = reqs.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [3, 4, 5]);
    assert_eq!(reqs[2]["body"]["messages"][1]["content"], "n3");

    let resp = send(addr, "DELETE", "/sim/requests", &[], b"").await;
    assert_eq!(resp.status, 200);
    assert!(requests(addr).await.is_empty());
}

#[tokio::test]
async fn cancelled_stream_is_recorded() {
    let addr = start();
    let mut body = chat("a long answer");
    body["stream"] = json!(true);
    let headers = [("x-sim-chunks", "200"), ("x-sim-chunk-gap-ms", "10")];
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&raw_request(
        "POST",
        "/v1/chat/completions",
        &headers,
        body.to_string().as_bytes(),
    ))
    .await
    .unwrap();
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    assert_eq!(requests(addr).await.pop().unwrap()["outcome"], "streaming");
    drop(s);
    wait_outcome(addr, "cancelled").await;

    // A stream read to the end is "ok".
    let resp = post(
        addr,
        "/v1/chat/completions",
        &[("x-sim-ttft-ms", "30"), ("x-sim-chunk-gap-ms", "5")],
        &body,
    )
    .await;
    assert_eq!(resp.data().last().unwrap(), "[DONE]");
    wait_outcome(addr, "ok").await;
}

#[tokio::test]
async fn keep_alive_and_latency() {
    let addr = start_with(SimConfig {
        latency_ms: 50,
        ..SimConfig::default()
    });
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = chat("hi").to_string();
    let one = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: sim\r\ncontent-length: {}\r\nx-sim-latency-ms: 0\r\n\r\n{body}",
        body.len()
    );
    let started = Instant::now();
    for _ in 0..3 {
        s.write_all(one.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        while !raw.ends_with(b"}") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            raw.extend_from_slice(&buf[..n]);
        }
        assert_eq!(parse(&raw).status, 200);
    }
    // Three answers faster than one configured latency each.
    assert!(started.elapsed() < Duration::from_millis(150));
    let started = Instant::now();
    post(addr, "/v1/chat/completions", &[], &chat("hi")).await;
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn serve_stops_on_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async {
        let _ = rx.await;
    };
    let server = tokio::spawn(super::serve(SimConfig::default(), listener, shutdown));
    let resp = post(addr, "/v1/chat/completions", &[], &chat("hi")).await;
    assert_eq!(resp.status, 200);
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}
