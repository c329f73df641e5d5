//! The ceiling of the engine devicegate is built on: a bare Pingora reverse proxy with the same
//! Pingora version and `ServerConf` as the gateway (`server.threads`, the grace periods), one
//! fixed peer, and no hooks at all: no routing, no forwarding headers, no client address. The
//! benchmarks (`benches/run.sh`, scenario 3) and the profiles (`benches/profile.sh pass`) run
//! it beside devicegate, so the cost devicegate adds to Pingora is measured, not guessed.
//!
//! ```sh
//! cargo run --release --example bare_proxy -- 127.0.0.1:19106 127.0.0.1:19104 1
//! #                                            listen          peer            threads
//! curl -s http://127.0.0.1:19106/small.json    # answered by whatever listens on the peer
//! ```

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};
use std::net::SocketAddr;

/// Sends every request to one peer, unchanged.
struct Bare {
    peer: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.peer, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bare_proxy LISTEN PEER [THREADS]   e.g. 127.0.0.1:8081 127.0.0.1:8080 1";
    let (Some(listen), Some(peer)) = (args.next(), args.next()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let Ok(peer) = peer.parse::<SocketAddr>() else {
        eprintln!("PEER must be ip:port\n{usage}");
        std::process::exit(2);
    };
    let threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    // The gateway's ServerConf as benches/conf/gate-memory.yaml makes it.
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(Opt::default()), conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Bare { peer });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
