//! Real highly available Redis on loopback, for the store's unit tests (included by path from
//! `src/device/redis.rs`) and for the end-to-end tests: a 3-primary Redis Cluster, and a
//! Sentinel setup (1 primary, 1 replica, 3 sentinels), each in plain TCP or TLS only (every
//! node, the cluster bus, replication and the sentinels, with a throwaway CA). Both use an ACL
//! user, `devicegate`, with the password [`PASSWORD`]; the default user is off. Only the standard
//! library and tempfile.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `devicegate` ACL user's password on every node.
pub const PASSWORD: &str = "redis-password-value";
pub const USER: &str = "devicegate";
/// The master name the sentinels watch.
pub const MASTER: &str = "devicegate-primary";

/// A loopback port that is free, and whose cluster bus port (+10000) is free too.
fn free_pair() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = l.local_addr().expect("local addr").port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn spawn(program: &str, args: &[String], package: &str) -> Child {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {program} ({e}): apt-get install {package} (./scripts/test.sh does it)"
            )
        })
}

/// `redis-cli` as the ACL user against a plain-TCP node on `port`; its output, trimmed.
pub fn cli(port: u16, args: &[&str]) -> String {
    run_cli(None, port, true, args)
}

/// `redis-cli` against a plain-TCP sentinel (no password on the sentinels).
pub fn sentinel_cli(port: u16, args: &[&str]) -> String {
    run_cli(None, port, false, args)
}

/// `redis-cli` against `port`, over TLS verified against `ca` if given, as the ACL user if
/// `auth`.
fn run_cli(ca: Option<&str>, port: u16, auth: bool, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if auth {
        cmd.args(["--user", USER, "--pass", PASSWORD, "--no-auth-warning"]);
    }
    if let Some(ca) = ca {
        cmd.args(["--tls", "--cacert", ca]);
    }
    let out = cmd
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): apt-get install redis-tools"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// TLS for every node: a throwaway CA and one certificate for 127.0.0.1 and localhost.
#[derive(Clone)]
pub struct Tls {
    pub ca: String,
    cert: String,
    key: String,
}

impl Tls {
    fn make(dir: &Path) -> Tls {
        let (ca, cert, key) = test_certificates(dir);
        Tls { ca, cert, key }
    }

    /// `redis-server` arguments: TLS on `port` and no plain port, for clients, the cluster bus
    /// and replication.
    fn server_args(&self, port: u16) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
        ];
        for (k, v) in [
            ("--tls-cert-file", &self.cert),
            ("--tls-key-file", &self.key),
            ("--tls-ca-cert-file", &self.ca),
        ] {
            args.extend([k.to_string(), v.clone()]);
        }
        args.extend(
            [
                "--tls-auth-clients",
                "no",
                "--tls-cluster",
                "yes",
                "--tls-replication",
                "yes",
            ]
            .map(String::from),
        );
        args
    }
}

pub fn wait_until(what: &str, limit: Duration, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {limit:?}");
}

/// The replicas' own ACL user, allowed replication only.
const REPLICATOR: &str = "replicator";

fn acl_user() -> Vec<String> {
    // The default user is off: only the ACL users can do anything.
    let mut args: Vec<String> = ["--user", "default", "off", "--user", USER, "on"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend([
        format!(">{PASSWORD}"),
        "~*".into(),
        "&*".into(),
        "+@all".into(),
    ]);
    args.extend(["--user".into(), REPLICATOR.into(), "on".into()]);
    args.extend([
        format!(">{PASSWORD}"),
        "+psync".into(),
        "+replconf".into(),
        "+ping".into(),
    ]);
    args
}

/// One `redis-server`, restartable with the same arguments (and so the same data directory).
struct Node {
    port: u16,
    args: Vec<String>,
    ca: Option<String>,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        self.child = Some(spawn("redis-server", &self.args, "redis-server"));
        wait_until(
            &format!("redis-server on {}", self.port),
            Duration::from_secs(30),
            || self.cli(&["PING"]) == "PONG",
        );
    }

    fn cli(&self, args: &[&str]) -> String {
        run_cli(self.ca.as_deref(), self.port, true, args)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn node(dir: &Path, name: &str, port: u16, tls: Option<&Tls>, extra: &[String]) -> Node {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).expect("node directory");
    let mut args: Vec<String> = match tls {
        Some(tls) => tls.server_args(port),
        None => vec!["--port".into(), port.to_string()],
    };
    args.extend([
        "--bind".into(),
        "127.0.0.1".into(),
        "--dir".into(),
        data.display().to_string(),
        "--save".into(),
        String::new(),
    ]);
    args.extend(acl_user());
    args.extend(extra.iter().cloned());
    Node {
        port,
        args,
        ca: tls.map(|t| t.ca.clone()),
        child: None,
    }
}

/// Three primaries, no replicas, each keeping an append-only file so a restarted node comes
/// back with its keys.
pub struct Cluster {
    nodes: Vec<Node>,
    /// With TLS: the CA every node's certificate comes from.
    pub tls: Option<Tls>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(false)
    }

    /// With `tls`, every node speaks TLS only, the cluster bus too.
    pub fn start_with(tls: bool) -> Cluster {
        Cluster::build(tls, 0)
    }

    /// Three primaries with one replica each: a primary that dies is replaced by its replica.
    pub fn start_with_replicas() -> Cluster {
        Cluster::build(false, 1)
    }

    fn build(tls: bool, replicas: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let tls = tls.then(|| Tls::make(dir.path()));
        let mut nodes = Vec::new();
        for i in 0..3 * (1 + replicas) {
            let port = free_pair();
            let extra: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                // The other nodes' slots stay served while one node is down.
                "--cluster-require-full-coverage",
                "no",
                "--appendonly",
                "yes",
                "--masteruser",
                USER,
                "--masterauth",
                PASSWORD,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut n = node(dir.path(), &format!("node{i}"), port, tls.as_ref(), &extra);
            n.start();
            nodes.push(n);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new("redis-cli");
        if let Some(tls) = &tls {
            create.args(["--tls", "--cacert", &tls.ca]);
        }
        let out = create
            .args([
                "--user",
                USER,
                "--pass",
                PASSWORD,
                "--no-auth-warning",
                "--cluster",
                "create",
            ])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = Cluster {
            nodes,
            tls,
            _dir: dir,
        };
        c.wait_ok();
        c
    }

    /// Until every running node says the cluster is up and knows every node.
    pub fn wait_ok(&self) {
        let known = format!("cluster_known_nodes:{}", self.nodes.len());
        // Every replica attached to its primary, as each running node sees it.
        let replicas = self.nodes.len() - 3;
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            wait_until(
                &format!("cluster_state:ok on {}", n.port),
                Duration::from_secs(60),
                || {
                    let info = n.cli(&["CLUSTER", "INFO"]);
                    let nodes = n.cli(&["CLUSTER", "NODES"]);
                    let attached = nodes
                        .lines()
                        .filter(|l| l.contains("slave") && !l.contains("fail"))
                        .count();
                    info.contains("cluster_state:ok")
                        && info.contains(&known)
                        && attached >= replicas
                },
            );
        }
    }

    /// A node that is running, to ask about the cluster.
    fn alive(&self) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a node running")
    }

    /// The index of node `i`'s replica.
    pub fn replica_of(&self, i: usize) -> usize {
        let id = self.id(i);
        let nodes = self.alive().cli(&["CLUSTER", "NODES"]);
        let line = nodes
            .lines()
            .find(|l| l.split_whitespace().nth(3) == Some(id.as_str()))
            .unwrap_or_else(|| panic!("node {i} has no replica: {nodes}"));
        self.index_of(line)
    }

    /// The index of the node a `CLUSTER NODES` line is about.
    fn index_of(&self, line: &str) -> usize {
        let port = line
            .split_whitespace()
            .nth(1)
            .and_then(|a| a.split(['@', ':']).nth(1))
            .and_then(|p| p.parse().ok());
        self.nodes
            .iter()
            .position(|n| Some(n.port) == port)
            .expect("one of ours")
    }

    /// The number of keys node `i` holds.
    pub fn dbsize(&self, i: usize) -> String {
        self.nodes[i].cli(&["DBSIZE"])
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `redis[s]://devicegate:…@127.0.0.1:<first node>`, and the other nodes as `host:port`.
    pub fn url_with_password(&self, password: &str) -> (String, Vec<String>) {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let url = format!(
            "{scheme}://{USER}:{password}@127.0.0.1:{}",
            self.nodes[0].port
        );
        let rest = self.nodes[1..]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        (url, rest)
    }

    fn id(&self, i: usize) -> String {
        let nodes = self.alive().cli(&["CLUSTER", "NODES"]);
        let port = format!("127.0.0.1:{}@", self.nodes[i].port);
        nodes
            .lines()
            .find(|l| l.contains(&port))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("node {i} not in {nodes}"))
            .to_string()
    }

    /// The index of the node that serves `key`'s slot.
    pub fn owner(&self, key: &str) -> usize {
        let slot = self.alive().cli(&["CLUSTER", "KEYSLOT", key]);
        let nodes = self.alive().cli(&["CLUSTER", "NODES"]);
        let slot: u32 = slot.parse().expect("a slot number");
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let serves = f.iter().skip(8).any(|r| {
                let mut b = r.split('-');
                let lo: u32 = b.next().and_then(|x| x.parse().ok()).unwrap_or(u32::MAX);
                let hi: u32 = b.next().and_then(|x| x.parse().ok()).unwrap_or(lo);
                (lo..=hi).contains(&slot)
            });
            if serves {
                return self.index_of(line);
            }
        }
        panic!("no node serves slot {slot}: {nodes}");
    }

    /// Starts moving `key`'s slot from the node serving it to node `to`, the way
    /// `redis-cli --cluster reshard` moves each slot: IMPORTING/MIGRATING, then MIGRATE of
    /// every key. The slot is left half moved: its keys are on `to`, and the old owner answers
    /// ASK for them, until [`Cluster::finish_move`].
    pub fn begin_move(&self, key: &str, to: usize) -> SlotMove {
        let from = self.owner(key);
        assert_ne!(from, to, "{key} is already on node {to}");
        let slot = self.nodes[0].cli(&["CLUSTER", "KEYSLOT", key]);
        let (src, dst) = (&self.nodes[from], &self.nodes[to]);
        let (src_id, dst_id) = (self.id(from), self.id(to));
        assert_eq!(
            dst.cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id]),
            "OK"
        );
        assert_eq!(
            src.cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]),
            "OK"
        );
        loop {
            let keys = src.cli(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args: Vec<String> = ["MIGRATE", "127.0.0.1"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.extend([
                dst.port.to_string(),
                String::new(),
                "0".into(),
                "5000".into(),
            ]);
            args.extend(["AUTH2".into(), USER.into(), PASSWORD.into(), "KEYS".into()]);
            args.extend(keys.iter().map(|k| k.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            assert_eq!(src.cli(&args), "OK", "MIGRATE {keys:?}");
        }
        SlotMove { slot, dst_id }
    }

    /// Ends a move: every node assigns the slot to its new owner (clients get MOVED).
    pub fn finish_move(&self, m: SlotMove) {
        for n in &self.nodes {
            assert_eq!(
                n.cli(&["CLUSTER", "SETSLOT", &m.slot, "NODE", &m.dst_id]),
                "OK"
            );
        }
    }

    /// Kills node `i` (SIGKILL): its slots are down until [`Cluster::restart`].
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again on its port and data directory; it rejoins with its keys.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].start();
        self.wait_ok();
    }
}

/// A slot half moved by [`Cluster::begin_move`].
pub struct SlotMove {
    slot: String,
    dst_id: String,
}

/// A primary, its replica and three sentinels (quorum 2) watching it as [`MASTER`], with a
/// failover 1.5 s after the primary stops answering.
pub struct Sentinels {
    data: Vec<Node>,
    sentinels: Vec<Child>,
    frozen: Vec<bool>,
    pub sentinel_ports: Vec<u16>,
    /// With TLS: the CA every node's and sentinel's certificate comes from.
    pub tls: Option<Tls>,
    _dir: tempfile::TempDir,
}

impl Sentinels {
    pub fn start() -> Sentinels {
        Sentinels::start_with(false)
    }

    /// With `tls`, the data nodes (replication too) and the sentinels speak TLS only.
    pub fn start_with(tls: bool) -> Sentinels {
        let dir = tempfile::tempdir().expect("temporary directory");
        let tls = tls.then(|| Tls::make(dir.path()));
        let auth: Vec<String> = ["--masteruser", REPLICATOR, "--masterauth", PASSWORD]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p0 = free_pair();
        let mut primary = node(dir.path(), "primary", p0, tls.as_ref(), &auth);
        primary.start();
        let p1 = free_pair();
        let mut extra = auth.clone();
        extra.extend(["--replicaof".into(), "127.0.0.1".into(), p0.to_string()]);
        let mut replica = node(dir.path(), "replica", p1, tls.as_ref(), &extra);
        replica.start();
        wait_until("the replica in sync", Duration::from_secs(30), || {
            replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        });
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for i in 0..3 {
            let port = free_pair();
            let conf = dir.path().join(format!("sentinel{i}.conf"));
            let listen = match &tls {
                Some(t) => format!(
                    "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                    t.cert, t.key, t.ca
                ),
                None => format!("port {port}\n"),
            };
            std::fs::write(
                &conf,
                format!(
                    "{listen}bind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {p0} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1500\n\
                     sentinel failover-timeout {MASTER} 10000\n\
                     sentinel parallel-syncs {MASTER} 1\n\
                     sentinel auth-user {MASTER} {USER}\n\
                     sentinel auth-pass {MASTER} {PASSWORD}\n",
                    dir = dir.path().display()
                ),
            )
            .expect("sentinel config");
            sentinels.push(spawn(
                "redis-sentinel",
                &[conf.display().to_string()],
                "redis-sentinel",
            ));
            sentinel_ports.push(port);
        }
        let s = Sentinels {
            data: vec![primary, replica],
            sentinels,
            frozen: vec![false; 3],
            sentinel_ports,
            tls,
            _dir: dir,
        };
        // A failover needs every sentinel to know the replica and the other sentinels.
        for &port in &s.sentinel_ports {
            wait_until(
                &format!("sentinel {port} knows the replica and the other sentinels"),
                Duration::from_secs(60),
                || {
                    let m = s.sentinel_on(port, &["SENTINEL", "MASTER", MASTER]);
                    let field = |name: &str| {
                        let lines: Vec<&str> = m.lines().collect();
                        lines
                            .iter()
                            .position(|l| *l == name)
                            .and_then(|i| lines.get(i + 1))
                            .and_then(|v| v.parse::<u32>().ok())
                            .unwrap_or(0)
                    };
                    field("num-slaves") >= 1 && field("num-other-sentinels") >= 2
                },
            );
        }
        s
    }

    /// `sentinels:` entries for the configuration.
    pub fn addresses(&self) -> Vec<String> {
        self.sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// Freezes sentinel `i` (SIGSTOP): it accepts connections and answers nothing.
    pub fn freeze(&mut self, i: usize) {
        self.signal(i, "-STOP");
        self.frozen[i] = true;
    }

    pub fn thaw(&mut self, i: usize) {
        self.signal(i, "-CONT");
        self.frozen[i] = false;
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.sentinels[i].id().to_string();
        let ok = Command::new("kill")
            .args([signal, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {signal} {pid} failed");
    }

    /// A sentinel that is not frozen.
    pub fn awake_sentinel(&self) -> u16 {
        let i = self
            .frozen
            .iter()
            .position(|f| !f)
            .expect("a sentinel awake");
        self.sentinel_ports[i]
    }

    /// The port the (awake) sentinels name as the primary now.
    pub fn primary_port(&self) -> Option<u16> {
        let out = self.sentinel_on(
            self.awake_sentinel(),
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER],
        );
        out.lines().nth(1).and_then(|p| p.parse().ok())
    }

    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(|n| n.port).collect()
    }

    /// `redis-cli` as the ACL user against the data node on `port`.
    pub fn data_cli(&self, port: u16, args: &[&str]) -> String {
        run_cli(self.tls.as_ref().map(|t| t.ca.as_str()), port, true, args)
    }

    /// `redis-cli` against the sentinel on `port`.
    pub fn sentinel_on(&self, port: u16, args: &[&str]) -> String {
        run_cli(self.tls.as_ref().map(|t| t.ca.as_str()), port, false, args)
    }

    /// Cuts the replica off the primary on `port`: its replication user is switched off there
    /// and its link closed, so what the primary acknowledges from now on is on the primary
    /// only, as in the moment before a primary dies with writes not yet replicated.
    pub fn cut_replication(&self, primary: u16) {
        assert_eq!(
            self.data_cli(primary, &["ACL", "SETUSER", REPLICATOR, "off"]),
            "OK"
        );
        self.data_cli(primary, &["CLIENT", "KILL", "USER", REPLICATOR]);
        let replica = self
            .data
            .iter()
            .map(|n| n.port)
            .find(|p| *p != primary)
            .expect("a replica");
        wait_until("the replica cut off", Duration::from_secs(10), || {
            self.data_cli(replica, &["INFO", "replication"])
                .contains("master_link_status:down")
        });
    }

    /// Kills the data node on `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.data.iter_mut().find(|n| n.port == port) {
            n.stop();
        }
    }

    /// Starts the data node on `port` again (as it was; the sentinels then make it a replica).
    pub fn restart(&mut self, port: u16) {
        if let Some(n) = self.data.iter_mut().find(|n| n.port == port) {
            n.start();
        }
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        for c in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A throwaway CA and a certificate for `localhost` and 127.0.0.1 signed by it, made with the
/// `openssl` command in `dir`: returns (ca.pem, server.pem, server.key) paths.
pub fn test_certificates(dir: &Path) -> (String, String, String) {
    let openssl = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "openssl {args:?} failed (apt-get install openssl)");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=devicegate test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext",
        "-out",
        "server.pem",
    ]);
    let path = |n: &str| dir.join(n).display().to_string();
    (path("ca.pem"), path("server.pem"), path("server.key"))
}
