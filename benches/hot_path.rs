//! The per-request work of the gateway, without network: body parse plus route decision and
//! upstream body, SSE usage extraction per chunk, and a rules reload.
//! Run: `cargo bench --bench hot_path`.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::path::Path;
use std::sync::Arc;
use tollgate::api::{ClientRequest, Endpoint};
use tollgate::config::{parse_rules, GatewayConfig, Report};
use tollgate::providers::Provider;
use tollgate::routing::{Facts, Router};
use tollgate::sse::SseFilter;

const GATEWAY: &str = "\
listen: 127.0.0.1:8080
providers:
  sim:
    kind: openai
    base_url: http://127.0.0.1:8089/v1
    keys: [{key: a, weight: 1}, {key: b, weight: 2}]
models:
  - id: sim/gpt-4o-mini
    aliases: [gpt-4o-mini]
  - id: sim/gpt-4o
";
const RULES: &str = "rules:\n  - name: premium\n    priority: 10\n    match: {model: 'gpt-4o*', tier: premium}\n    targets: [{to: sim/gpt-4o}]\n  - name: mini\n    match: {model: gpt-4o-mini}\n    targets: [{to: sim/gpt-4o-mini, weight: 3}, {to: sim/gpt-4o}]\n";
const BODY: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What is the capital of France? Answer in one word."}],"temperature":0.2,"max_tokens":64,"stream":true}"#;
const CHUNK: &[u8] = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" Paris\"},\"finish_reason\":null}],\"usage\":null}\n\n";
const USAGE: &[u8] = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":2,\"total_tokens\":22}}\n\n";

fn setup() -> (GatewayConfig, Vec<Arc<Provider>>) {
    let gw = GatewayConfig::parse(Path::new("gateway.yaml"), GATEWAY).expect("config");
    let providers = gw
        .providers
        .iter()
        .map(|p| Arc::new(Provider::resolve(p, &|_| None, true).expect("provider")))
        .collect();
    (gw, providers)
}

fn build_router(gw: &GatewayConfig, providers: &[Arc<Provider>]) -> Router {
    let (rules, errors) = parse_rules(Path::new("rules.yaml"), RULES);
    assert!(errors.is_empty(), "{errors:?}");
    let mut report = Report::new(Path::new("rules.yaml"), RULES);
    Router::build(gw, providers, &rules, &mut report).expect("router")
}

fn benches(c: &mut Criterion) {
    let (gw, providers) = setup();
    let router = build_router(&gw, &providers);

    let headers = http::HeaderMap::new();
    c.bench_function("parse_route_rewrite", |b| {
        b.iter(|| {
            let req = ClientRequest::parse(Endpoint::Chat, black_box(Bytes::from_static(BODY)))
                .expect("parse");
            let facts = Facts::new(&req.model, Endpoint::Chat, &headers);
            let route = router.route(&facts).expect("route");
            let plan = route.plan(0.4);
            let target = &route.targets[plan[0]];
            black_box(req.upstream_body(&target.model))
        })
    });

    c.bench_function("sse_chunk_pass_through", |b| {
        let mut filter = SseFilter::new(true);
        let chunk = Bytes::from_static(CHUNK);
        b.iter(|| black_box(filter.push(chunk.clone())))
    });

    c.bench_function("sse_usage_chunk", |b| {
        let mut filter = SseFilter::new(true);
        let chunk = Bytes::from_static(USAGE);
        b.iter(|| black_box(filter.push(chunk.clone())))
    });

    c.bench_function("rules_reload_and_swap", |b| {
        let live = arc_swap::ArcSwap::from_pointee(build_router(&gw, &providers));
        b.iter(|| live.store(Arc::new(build_router(&gw, &providers))))
    });
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
