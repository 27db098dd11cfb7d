//! The per-request work of the gateway, without network: body parse plus route decision and
//! upstream body, OpenAI/Anthropic translation both ways, SSE usage extraction per chunk, a
//! rules reload, governance's admission check (every level, embedded state), and the cache:
//! an exact hit replayed whole and as a stream, and a semantic lookup (static embedder plus
//! search) in one scope of 100,000 entries.
//! Run: `cargo bench --bench hot_path`.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::path::Path;
use std::sync::Arc;
use tollgate::api::{ClientRequest, Endpoint};
use tollgate::config::{parse_rules, GatewayConfig, Report};
use tollgate::governance::keys::{CustomerSpec, Directory, KeySpec, TeamSpec};
use tollgate::governance::period::SystemClock;
use tollgate::governance::prices::PriceTable;
use tollgate::governance::store::MemoryStore;
use tollgate::governance::{Estimate, Governance, Settings};
use tollgate::providers::anthropic;
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

const ANTHROPIC_ANSWER: &[u8] = br#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Paris."},{"type":"tool_use","id":"toolu_01","name":"lookup","input":{"city":"Paris"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":20,"cache_read_input_tokens":100,"output_tokens":9}}"#;
const ANTHROPIC_DELTA: &[u8] = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" Paris\"}}\n\n";

fn translation(c: &mut Criterion) {
    c.bench_function("openai_to_anthropic_request", |b| {
        b.iter(|| {
            anthropic::chat_to_messages(black_box(BODY), "claude-sonnet-4-5", 4096)
                .expect("translate")
        })
    });
    c.bench_function("anthropic_to_openai_response", |b| {
        b.iter(|| {
            anthropic::messages_to_chat(black_box(ANTHROPIC_ANSWER), "claude/claude-sonnet-4-5")
                .expect("translate")
        })
    });
    c.bench_function("anthropic_stream_chunk_to_openai", |b| {
        let mut t = anthropic::MessagesStreamToChat::new("claude/claude-sonnet-4-5", true);
        t.push(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":5}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        b.iter(|| black_box(t.push(black_box(ANTHROPIC_DELTA))))
    });
}

fn admission(c: &mut Criterion) {
    fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
        serde_yaml::from_str(s).expect("yaml")
    }
    let customers: Vec<CustomerSpec> = yaml("[{id: acme, budgets: [{usd: 1000000, period: month}], limits: {requests: [{max: 1000000000, per: minute}]}}]");
    let teams: Vec<TeamSpec> = yaml("[{id: search, customer: acme, budgets: [{usd: 1000000, period: day}], limits: {tokens: [{max: 1000000000000, per: minute}]}}]");
    let keys: Vec<KeySpec> = yaml("[{id: bot, key: sk-bench, team: search, budgets: [{usd: 1000000, period: week}], limits: {requests: [{max: 1000000000, per: minute}], tokens: [{max: 1000000000000, per: hour}], concurrent: 1000}, models: {deny: ['o1*']}, providers: {sim: {budgets: [{usd: 1000000, period: month}]}}}]");
    let dir = Directory::build(customers, teams, keys, &|s| Ok(s.to_string())).expect("directory");
    let settings = Settings {
        auth_required: true,
        default_max_tokens: 1024,
        alert_thresholds: vec![50, 80, 100],
    };
    let gov = Governance::new(
        dir,
        PriceTable::embedded(),
        Arc::new(MemoryStore::default()),
        Arc::new(SystemClock),
        settings,
    );
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "authorization",
        http::HeaderValue::from_static("Bearer sk-bench"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let est = Estimate {
        prompt_tokens: 40,
        completion_tokens: 64,
    };
    // Identify the key, check the model, reserve at customer, team, key and provider (two
    // budgets or limits each), then settle: what one request costs governance.
    c.bench_function("admission_all_levels_embedded", |b| {
        b.iter(|| {
            let key = gov
                .identify(black_box(&headers))
                .expect("key")
                .expect("known");
            gov.check_model(&key, "gpt-4o-mini").expect("allowed");
            let a = rt
                .block_on(gov.admit(&key, "sim", "gpt-4o-mini", &est))
                .expect("admitted");
            gov.settle(a, Default::default());
        })
    });
}

/// A realistic chat request: a system prompt and a few turns, about 1.5 KB.
fn chat_body(question: &str) -> Vec<u8> {
    let system = "You are the support assistant of a retail bank. Answer briefly and politely, \
                  never give investment advice, and point to the app's help pages when you can. "
        .repeat(4);
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o-mini",
        "temperature": 0.2,
        "max_tokens": 256,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "Hi, I have a question about my card."},
            {"role": "assistant", "content": "Of course. What would you like to know about your card?"},
            {"role": "user", "content": "I travelled abroad last week and paid in a foreign currency in several shops."},
            {"role": "assistant", "content": "Thanks. Card payments abroad are converted at the network rate on the day."},
            {"role": "user", "content": question}
        ]
    }))
    .unwrap_or_default()
}

fn cache(c: &mut Criterion) {
    use tollgate::cache::embed::minilm::MiniLm;
    use tollgate::cache::embed::static_model::StaticModel;
    use tollgate::cache::embed::Embed;
    use tollgate::cache::index::Index;
    use tollgate::cache::key::Scope;
    use tollgate::cache::{entry, Cache, CacheSpec, Lookup};
    use tollgate::telemetry::Usage;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let spec: CacheSpec = serde_yaml::from_str("mode: exact\n").expect("spec");
    let cache = rt
        .block_on(async { Cache::start(&spec, Path::new(".")) })
        .expect("cache");
    let ctl = cache.control(&http::HeaderMap::new()).expect("control");
    let scope = Scope {
        partition: "team:support",
        namespace: "default",
        endpoint: Endpoint::Chat,
        model: "sim/gpt-4o-mini",
        variant: "",
    };
    let body = chat_body("Why was I charged a fee on those payments?");
    let answer = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Payments in a foreign currency carry a 2.75% non-sterling transaction fee. You can see each fee in the app under Card > Transactions."},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":310,"completion_tokens":31,"total_tokens":341}}"#;
    rt.block_on(async {
        if let Lookup::Miss(Some(mut fill), _) = cache
            .lookup(&ctl, &scope, &body, false, &["sim/gpt-4o-mini"], &[])
            .await
        {
            fill.capture(answer);
            fill.store(Usage::default(), "sim", "gpt-4o-mini", "sim/gpt-4o-mini");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    });
    for (name, stream) in [
        ("cache_exact_hit", false),
        ("cache_exact_hit_replay_as_stream", true),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let found = cache
                        .lookup(
                            &ctl,
                            &scope,
                            black_box(&body),
                            stream,
                            &["sim/gpt-4o-mini"],
                            &[],
                        )
                        .await;
                    match found {
                        Lookup::Hit(hit) => entry::replay(&hit.entry, Endpoint::Chat, stream, true),
                        _ => None,
                    }
                    .expect("an exact hit")
                })
            })
        });
    }

    // Semantic: the static embedder and one scope of 100,000 stored questions (Banking77's
    // questions with numbered variations, embedded by the same model).
    let dir = std::env::var("TOLLGATE_MODELS").unwrap_or_else(|_| "models".into());
    let Ok(model) = StaticModel::load(&Path::new(&dir).join("static")) else {
        eprintln!("models/static missing: run scripts/fetch-models.sh; semantic benches skipped");
        return;
    };
    let texts: Vec<String> =
        std::fs::read_to_string("../shared/data/paraphrase/banking77_test.csv")
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|l| {
                l.rsplit_once(',')
                    .map(|(t, _)| t.trim_matches('"').to_string())
            })
            .collect();
    let texts = if texts.is_empty() {
        vec!["How do I reset my password?".to_string()]
    } else {
        texts
    };
    let index = Index::new(model.dims(), 4096, 200_000);
    for i in 0..100_000usize {
        let t = format!(
            "{} (case {} of {})",
            texts[i % texts.len()],
            i / texts.len(),
            i % 97
        );
        if let Ok(v) = model.embed(&t) {
            index.insert(1, i as u128, &v, u64::MAX);
        }
    }
    let query = "Why was I charged a fee on card payments abroad?";
    let v = model.embed(query).expect("embed");
    c.bench_function("cache_semantic_embed_static", |b| {
        b.iter(|| model.embed(black_box(query)).expect("embed"))
    });
    let non_ascii = "Why was I charged a fee on card payments abroad\u{2019}";
    c.bench_function("cache_semantic_embed_static_non_ascii", |b| {
        b.iter(|| model.embed(black_box(non_ascii)).expect("embed"))
    });
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(45);
    c.bench_function("cache_semantic_embed_static_2kb", |b| {
        b.iter(|| model.embed(black_box(&long)).expect("embed"))
    });
    if let Ok(minilm) = MiniLm::load(&Path::new(&dir).join("minilm")) {
        let mut group = c.benchmark_group("minilm");
        group.sample_size(20);
        group.bench_function("cache_semantic_embed_minilm", |b| {
            b.iter(|| minilm.embed(black_box(query)).expect("embed"))
        });
        group.finish();
    }
    c.bench_function("cache_semantic_search_100k", |b| {
        b.iter(|| index.search(1, black_box(&v), 4))
    });
    c.bench_function("cache_semantic_lookup_100k", |b| {
        b.iter(|| {
            let v = model.embed(black_box(query)).expect("embed");
            index.search(1, &v, 4)
        })
    });
}

criterion_group!(hot_path, benches, translation, admission, cache);
criterion_main!(hot_path);
