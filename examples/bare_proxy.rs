//! The ceiling of the engine devicegate is built on: a bare Pingora reverse proxy with the same
//! Pingora version and `ServerConf` as the gateway (`server.threads`, the grace periods), one
//! fixed peer, and no hooks at all: no routing, no forwarding headers, no client address. The
//! benchmarks (`benches/run.sh`, scenario 3) and the profiles (`benches/profile.sh pass`) run
//! it beside devicegate, so the cost devicegate adds to Pingora is measured, not guessed.
//!
//! With `no-modules` it also drops Pingora's default downstream module (response compression
//! at level 0), as devicegate does: the engine's ceiling with that setting.
//!
//! ```sh
//! cargo run --release --example bare_proxy -- 127.0.0.1:19106 127.0.0.1:19104 1 [no-modules]
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
    modules: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        if self.modules {
            modules.add_module(
                pingora::modules::http::compression::ResponseCompressionBuilder::enable(0),
            );
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.peer, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bare_proxy LISTEN PEER [THREADS [no-modules]]   e.g. 127.0.0.1:8081 127.0.0.1:8080 1";
    let (Some(listen), Some(peer)) = (args.next(), args.next()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let Ok(peer) = peer.parse::<SocketAddr>() else {
        eprintln!("PEER must be ip:port\n{usage}");
        std::process::exit(2);
    };
    let threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    // Pingora's default unless told otherwise.
    let modules = args.next().as_deref() != Some("no-modules");
    // The gateway's ServerConf as benches/conf/gate-memory.yaml makes it.
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(Opt::default()), conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Bare { peer, modules });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
