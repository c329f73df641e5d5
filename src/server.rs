//! Start-up: the configuration file and the verification pages it names, checked together
//! ([`prepare`], also what `--check` runs), then the Pingora server built from them ([`build`]).
//!
//! This is the one place that knows both `config` and `pages`, so neither imports the other.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::proxy::http_proxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;

use crate::clock::SystemClock;
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::pages::Pages;
use crate::proxy::Gateway;

/// A configuration and the pages built from its `ui:` section, both valid.
pub struct Prepared {
    pub config: Config,
    pub pages: Pages,
}

/// Reads a configuration file and builds its pages; every problem names its key.
pub fn prepare(path: &std::path::Path) -> Result<Prepared, ConfigErrors> {
    let config = Config::load(path)?;
    with_pages(config)
}

/// [`prepare`] for a configuration text; `env` looks up `${NAME}` variables.
pub fn prepare_yaml(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Prepared, ConfigErrors> {
    with_pages(Config::from_yaml(text, env)?)
}

/// Compiles (and tries) the templates once: a broken operator template is a configuration
/// error, reported by `--check`, not a broken page in front of a user.
pub fn with_pages(config: Config) -> Result<Prepared, ConfigErrors> {
    match Pages::new(&config.ui) {
        Ok(pages) => Ok(Prepared { config, pages }),
        Err(list) => Err(ConfigErrors(
            list.into_iter()
                .map(|e| match e.strip_prefix("ui.default_language: ") {
                    Some(m) => ConfigError {
                        key: "ui.default_language".into(),
                        message: m.to_string(),
                    },
                    None => ConfigError {
                        key: "ui.templates_dir".into(),
                        message: e,
                    },
                })
                .collect(),
        )),
    }
}

/// A Pingora server with the gateway listening on `config.listen`, and the admin endpoints on
/// `admin.listen` when configured.
///
/// With `upgrade`, the listeners are taken over from a running gateway: it hands them over
/// through `server.upgrade_sock` when it receives SIGQUIT, then drains and exits, so no
/// connection is refused during the switch.
pub fn build(prepared: Prepared, upgrade: bool) -> Result<Server, String> {
    let Prepared { config, pages } = prepared;
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
    let gateway = Gateway::new(config.clone(), pages, Arc::new(SystemClock))?;
    let operator = gateway.operator();
    if let Some(addr) = config.admin_listen {
        let mut admin = Service::new("devicegate admin".into(), gateway.admin(operator.clone()));
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    // Every instance refreshes the kill switch and sweeps the store.
    server.add_service(pingora::services::background::background_service(
        "devicegate upkeep",
        crate::proxy::operator::Upkeep(operator),
    ));
    let drain = drain_period(config.server.grace_period_seconds);
    let proxy = Draining {
        app: Arc::new(http_proxy(&server.configuration, gateway)),
        drain,
    };
    let mut service = Service::new("devicegate".into(), proxy);
    service.add_tcp(&config.listen.to_string());
    if let Some(tls) = &config.listen_tls {
        service
            .add_tls(&tls.listen.to_string(), &tls.cert_file, &tls.key_file)
            .map_err(|e| format!("listen_tls: {e}"))?;
    }
    server.add_service(service);
    Ok(server)
}

/// How long connections accepted just before the listener closed get to send their first
/// request: half the grace period, at most a second. The other half is left for the requests
/// themselves to finish before Pingora stops the runtime (which drops whatever still runs).
pub fn drain_period(grace_period_seconds: u64) -> Duration {
    (Duration::from_secs(grace_period_seconds) / 2).min(Duration::from_secs(1))
}

/// The proxy, with a drain before its shutdown clean-up.
///
/// When Pingora shuts a listener down (SIGTERM, or SIGQUIT once the sockets are handed to the
/// new process), it stops accepting and then, in the app's `cleanup`, wakes every connection
/// still waiting for its request head and closes it. A connection the old process accepted a
/// moment before, whose request is still on the wire, was closed unanswered: during an upgrade
/// a client saw "connection closed before message completed" although the new process was
/// accepting all along. Waiting [`drain_period`] before that clean-up lets such a request
/// arrive and be served (with keep-alive off, so the connection then closes); idle keep-alive
/// connections are still closed, as clients expect of any restart.
struct Draining<A> {
    app: Arc<A>,
    drain: Duration,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Draining<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.app.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        tokio::time::sleep(self.drain).await;
        self.app.cleanup().await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "listen: 127.0.0.1:8080\npublic_url: http://localhost:8080\nupstream:\n  address: 127.0.0.1:3000\n  issuer: http://localhost:8080\nclients:\n  - client_id: tv-app\n";

    fn errors(yaml: &str) -> Vec<String> {
        match prepare_yaml(yaml, &|_| None) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn drain_fits_inside_the_grace_period() {
        assert_eq!(drain_period(1), Duration::from_millis(500));
        assert_eq!(drain_period(5), Duration::from_secs(1));
    }

    /// An app that records when its clean-up (closing connections still waiting for a
    /// request) ran.
    #[derive(Default)]
    struct Recording(std::sync::atomic::AtomicBool);

    #[async_trait]
    impl ServerApp for Recording {
        async fn process_new(self: &Arc<Self>, _: Stream, _: &ShutdownWatch) -> Option<Stream> {
            None
        }
        async fn cleanup(&self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn connections_waiting_for_their_request_are_closed_only_after_the_drain() {
        let inner = Arc::new(Recording::default());
        let app = Arc::new(Draining {
            app: inner.clone(),
            drain: Duration::from_millis(500),
        });
        let cleaning = tokio::spawn({
            let app = app.clone();
            async move { app.cleanup().await }
        });
        let cleaned = || inner.0.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            !cleaned(),
            "a request still on the wire would have been cut off"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        cleaning.await.unwrap();
        assert!(cleaned());
    }

    #[test]
    fn templates_dir_overrides_are_compiled_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("locales")).unwrap();
        std::fs::write(dir.path().join("message.html"), "{% extends \"base.html\" %}{% block content %}<h1>{{ heading }}</h1><p>{{ t.x_help }}</p>{% endblock %}").unwrap();
        std::fs::write(
            dir.path().join("locales/en.yaml"),
            "x_help: Call the help desk\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("locales/sv.yaml"),
            "enter_button: Continuar\n",
        )
        .unwrap();
        let yaml = format!(
            "{GOOD}ui:\n  templates_dir: {}\n  default_language: sv\n",
            dir.path().display()
        );
        let Prepared { pages, .. } = prepare_yaml(&yaml, &|_| None).unwrap();
        let html = pages.message(
            pages.language(Some("en")),
            crate::pages::Message::Reported,
            "/d",
        );
        assert!(
            html.contains("<h1>Denied and reported</h1><p>Call the help desk</p>"),
            "{html}"
        );
        assert_eq!(pages.language(None).lang, "sv");

        std::fs::write(dir.path().join("consent.html"), "{% for %}").unwrap();
        std::fs::write(dir.path().join("locales/de.yaml"), "enter_buton: Los\n").unwrap();
        let errs = errors(&yaml);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("ui.templates_dir: consent.html")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("locales/de.yaml") && e.contains("enter_buton")),
            "{errs:?}"
        );
    }

    #[test]
    fn an_unknown_default_language_names_its_key() {
        let errs = errors(&format!("{GOOD}ui:\n  default_language: xx\n"));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("ui.default_language") && e.contains("en, es")),
            "{errs:?}"
        );
    }
}
