//! A Pingora proxy that does nothing but forward to one upstream: the floor under any gateway
//! built on Pingora, measured beside Tollgate by `scripts/bench.sh`.
//!   cargo build --release --example pingora_floor
//!   target/release/examples/pingora_floor LISTEN UPSTREAM     e.g. 127.0.0.1:9000 127.0.0.1:8089

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
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(Ok(upstream))) = (args.get(1), args.get(2).map(|a| a.parse())) else {
        eprintln!("usage: pingora_floor LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Forward(upstream));
    service.add_tcp(listen);
    server.add_service(service);
    server.run_forever();
}
