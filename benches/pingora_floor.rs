//! A Pingora proxy that does nothing but forward to one upstream: the floor under any gateway
//! built on Pingora, measured beside Tollgate by `scripts/bench.sh`.
//!   cargo build --release --example pingora_floor
//!   target/release/examples/pingora_floor LISTEN UPSTREAM [LISTEN UPSTREAM ...]
//!   e.g. 127.0.0.1:9000 127.0.0.1:8089 (each listener forwards to its own upstream)

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{http_proxy_service, ProxyHttp};
use pingora::server::configuration::ServerConf;
use std::net::SocketAddr;

/// The same allocator as Tollgate, so the comparison is of the proxy work alone.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Forward(SocketAddr);

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pairs: Option<Vec<(String, SocketAddr)>> = args
        .chunks(2)
        .map(|p| Some((p.first()?.clone(), p.get(1)?.parse().ok()?)))
        .collect();
    let Some(pairs) = pairs.filter(|p| !p.is_empty()) else {
        eprintln!("usage: pingora_floor LISTEN UPSTREAM [LISTEN UPSTREAM ...]");
        std::process::exit(2);
    };
    // The same runtime settings as Tollgate's.
    let conf = ServerConf {
        threads: 1,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    for (listen, upstream) in pairs {
        let mut service = http_proxy_service(&server.configuration, Forward(upstream));
        service.add_tcp(&listen);
        server.add_service(service);
    }
    server.run_forever();
}
