//! tollgate-sim: a fast, deterministic fake OpenAI / Anthropic provider.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use tollgate::sim::{spawn_thread, SimConfig};

const AFTER_HELP: &str = "\
Endpoints:
  POST /v1/chat/completions, /v1/completions, /v1/embeddings      (OpenAI)
  POST /openai/deployments/{name}/chat/completions|completions|embeddings  (Azure OpenAI)
  POST /v1/messages, /v1/messages/count_tokens                    (Anthropic)
  GET  /v1/models
  GET  /sim/requests    the last --history requests, with their outcome; DELETE clears it

Per-request headers (override the options above):
  x-sim-latency-ms, x-sim-ttft-ms, x-sim-chunks, x-sim-chunk-gap-ms
  x-sim-cached-tokens N   report N cached prompt tokens in usage
  x-sim-parallel-tools N  return N tool calls when the request has tools

Faults, by header `x-sim-fault: NAME` or a model name containing `fault-NAME`
(e.g. sim-fault-429, gpt-4o-mini-fault-reset):
  429        rate-limit error with Retry-After: 1
  500, 502, 503  error JSON in the endpoint's provider shape
  html       502 with an HTML body
  reset      read the request, then close the connection with a TCP RST
  stall      read the request, then never answer
  midstream  streams: two content chunks, then an error event, no [DONE] (otherwise 500)
  trickle    send the response in 16-byte pieces, 20 ms apart";

/// A fake LLM provider speaking the OpenAI and Anthropic APIs, for tests and benchmarks.
#[derive(Parser)]
#[command(name = "tollgate-sim", version, after_help = AFTER_HELP)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    /// Delay before the response headers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Streams: delay before the first chunk, in milliseconds.
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    /// Streams: number of content chunks the reply is spread over.
    #[arg(long, default_value_t = 4)]
    chunks: usize,
    /// Streams: delay between chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_gap_ms: u64,
    /// Number of requests kept for GET /sim/requests.
    #[arg(long, default_value_t = 256)]
    history: usize,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// Waits for SIGTERM or SIGINT.
fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let cfg = SimConfig {
        listen: args.listen,
        latency_ms: args.latency_ms,
        ttft_ms: args.ttft_ms,
        chunks: args.chunks,
        chunk_gap_ms: args.chunk_gap_ms,
        history: args.history,
        threads: args.threads,
    };
    let addr = match spawn_thread(cfg) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("tollgate-sim: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) =
        writeln!(stdout, "tollgate-sim listening on {addr}").and_then(|()| stdout.flush())
    {
        eprintln!("tollgate-sim: cannot write to stdout: {e}");
    }
    drop(stdout);
    match wait_for_signal() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-sim: cannot wait for signals: {e}");
            ExitCode::FAILURE
        }
    }
}
