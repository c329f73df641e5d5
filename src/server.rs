//! Building and running the Pingora server from a validated [`Config`].

use std::sync::Arc;

use pingora::proxy::http_proxy_service;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;

use crate::config::Config;
use crate::proxy::Gateway;

/// A Pingora server with the gateway listening on `config.listen`, and the admin endpoints on
/// `admin.listen` when configured.
///
/// With `upgrade`, the listeners are taken over from a running gateway: it hands them over
/// through `server.upgrade_sock` when it receives SIGQUIT, then drains and exits, so no
/// connection is refused during the switch.
pub fn build(config: Config, upgrade: bool) -> Result<Server, String> {
    if !upgrade {
        check_addresses_free(&config)?;
    }
    let config = Arc::new(config);
    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout_seconds),
        // Pass-through TLS to the IdP verifies with this CA instead of the system roots.
        ca_file: config
            .upstream
            .ca_file
            .as_ref()
            .map(|(path, _)| path.clone()),
        upgrade_sock: config.server.upgrade_sock.clone(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    let gateway = Gateway::new(config.clone())?;
    if let Some(addr) = config.admin_listen {
        let mut admin = Service::new("devicegate admin".into(), gateway.admin());
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    let mut service = http_proxy_service(&server.configuration, gateway);
    service.add_tcp(&config.listen.to_string());
    if let Some(tls) = &config.listen_tls {
        service
            .add_tls(&tls.listen.to_string(), &tls.cert_file, &tls.key_file)
            .map_err(|e| format!("listen_tls: {e}"))?;
    }
    server.add_service(service);
    Ok(server)
}

/// Fails when a listening address is taken or not ours. Pingora would retry for half a minute
/// and then leave a process running that listens on nothing; an operator's supervisor must see
/// the failure instead. (With `--upgrade` the sockets come from the running gateway.)
fn check_addresses_free(config: &Config) -> Result<(), String> {
    let mut addrs = vec![("listen", config.listen)];
    addrs.extend(
        config
            .listen_tls
            .as_ref()
            .map(|t| ("listen_tls.listen", t.listen)),
    );
    addrs.extend(config.admin_listen.map(|a| ("admin.listen", a)));
    for (key, addr) in addrs {
        std::net::TcpListener::bind(addr)
            .map_err(|e| format!("{key}: cannot listen on {addr}: {e}"))?;
    }
    Ok(())
}
