//! A small HTTP/1.1 keep-alive load generator for devicegate's benchmarks (`scripts/bench.sh`,
//! `benches/README.md`), for the loads `wrk` cannot make:
//!
//! ```text
//! loadgen http --url http://127.0.0.1:8080 --method POST --path /device/code \
//!              --body 'client_id=tv-app' --concurrency 16 --requests 100000
//! loadgen poll --url http://127.0.0.1:8080 --device-path /device/code --client-id tv-app \
//!              --grants 10000 --duration 20 --warmup 5 --cpu-pid 1234
//! loadgen e2e  --url http://127.0.0.1:8080 --client-id tv-app --concurrency 4 --duration 15
//! ```
//!
//! - `http`: one request, sent over `--concurrency` keep-alive connections as fast as they are
//!   answered (closed loop), for `--duration` seconds or `--requests` requests in all.
//! - `poll`: creates `--grants` device authorizations, then polls each at its `interval` (plus
//!   `--margin-ms`) over `--connections` shared keep-alive connections, the polls spread evenly
//!   over the interval. A poll's latency runs from when it was due, or from when its connection
//!   became free if that was later (no coordinated omission), to the last byte of the answer.
//!   `--cpu-pid` reports the CPU time those processes spent during the measured window.
//! - `e2e`: complete device flows with no browser: device authorization, the verification page
//!   (enter the code, Approve with its CSRF token), the IdP's login (oidc-provider's
//!   `devInteractions` form, any user name) and consent if asked, the callback (where the gateway
//!   exchanges the code and checks the ID token), and the device's poll that takes the tokens.
//!   Reports flows/s and the latency of each step.
//!
//! Each run prints one JSON object on stdout (latencies in microseconds); progress and errors go
//! to stderr. Latencies go into a log-linear histogram (32 sub-buckets per power of two: a
//! reported percentile is the upper edge of its bucket, within ~3 % of the true value).
//! Only plain-HTTP `http://ip:port` targets are supported: it is meant for 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

// ---------------------------------------------------------------------------------------------
// Latency histogram.

/// Sub-buckets per power of two (2^5 = 32): relative error of a bucket at most 1/32.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this (ns) get a bucket each.
const LINEAR: u64 = 2 * SUB;

/// A log-linear histogram of nanosecond values, like HdrHistogram with 2 significant bits less.
#[derive(Clone)]
struct Hist {
    counts: Vec<u64>,
    n: u64,
    sum: u128,
    max: u64,
}

impl Hist {
    fn new() -> Self {
        Self {
            counts: vec![0; (LINEAR + 64 * SUB) as usize],
            n: 0,
            sum: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < LINEAR {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros(); // >= SUB_BITS + 1
        let shift = msb - SUB_BITS; // v >> shift is in [SUB, 2 * SUB)
        let top = v >> shift;
        (LINEAR + u64::from(shift - 1) * SUB + (top - SUB)) as usize
    }

    /// The largest value that falls in bucket `i`.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < LINEAR {
            return i;
        }
        let j = i - LINEAR;
        let shift = j / SUB + 1;
        let top = j % SUB + SUB;
        ((top + 1) << shift) - 1
    }

    fn record(&mut self, d: Duration) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::index(v)] += 1;
        self.n += 1;
        self.sum += u128::from(v);
        self.max = self.max.max(v);
    }

    fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.sum += o.sum;
        self.max = self.max.max(o.max);
    }

    /// The `q` quantile (0..=1), in nanoseconds.
    fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }

    fn mean_ns(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum as f64 / self.n as f64
        }
    }

    /// Count, mean and percentiles in microseconds.
    fn summary(&self) -> Value {
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        json!({
            "count": self.n,
            "mean_us": (self.mean_ns() / 100.0).round() / 10.0,
            "p50_us": us(self.quantile(0.50)),
            "p90_us": us(self.quantile(0.90)),
            "p99_us": us(self.quantile(0.99)),
            "p999_us": us(self.quantile(0.999)),
            "max_us": us(self.max),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client connection.

struct Response {
    status: u16,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` member of a JSON error answer, without parsing the whole body.
    fn oauth_error(&self) -> Option<&str> {
        let body = std::str::from_utf8(&self.body).ok()?;
        let rest = &body[body.find("\"error\":\"")? + 9..];
        rest.split('"').next()
    }
}

/// One keep-alive connection, reopened when the server closes it.
struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a complete chunked body at the start of `data`; `None` when more bytes are needed.
fn dechunk(data: &[u8]) -> io::Result<Option<(Vec<u8>, usize)>> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(eol) = find(&data[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&data[pos..pos + eol]).map_err(|_| bad("chunk size"))?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
        pos += eol + 2;
        if size == 0 {
            // Trailers (none expected), then the final CRLF.
            let Some(end) = find(&data[pos..], b"\r\n") else {
                return Ok(None);
            };
            return Ok(Some((body, pos + end + 2)));
        }
        if data.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[pos..pos + size]);
        pos += size + 2;
    }
}

impl Conn {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// Sends one complete request and reads its response. A request on a reused connection
    /// that the server had closed meanwhile (nothing came back) is sent once more on a new one.
    async fn send(&mut self, request: &[u8]) -> io::Result<Response> {
        for attempt in 0..2 {
            let reused = self.stream.is_some();
            if !reused {
                let s = TcpStream::connect(self.addr).await?;
                s.set_nodelay(true)?;
                self.stream = Some(s);
            }
            let result = self.exchange(request).await;
            match result {
                Ok((resp, close)) => {
                    if close {
                        self.stream = None;
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    self.stream = None;
                    if !(reused && attempt == 0 && self.buf.is_empty()) {
                        return Err(e);
                    }
                }
            }
        }
        Err(bad("unreachable"))
    }

    async fn exchange(&mut self, request: &[u8]) -> io::Result<(Response, bool)> {
        let s = self.stream.as_mut().expect("connected");
        self.buf.clear();
        s.write_all(request).await?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if s.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| bad("head"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        let mut close = get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let length = get("content-length").and_then(|v| v.parse::<usize>().ok());
        let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let body = if status == 204 || status == 304 || (100..200).contains(&status) {
            Vec::new()
        } else if let Some(len) = length {
            while self.buf.len() < head_end + len {
                if s.read_buf(&mut self.buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            self.buf[head_end..head_end + len].to_vec()
        } else if chunked {
            loop {
                if let Some((body, _)) = dechunk(&self.buf[head_end..])? {
                    break body;
                }
                if s.read_buf(&mut self.buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        } else {
            // Delimited by the end of the connection.
            while s.read_buf(&mut self.buf).await? > 0 {}
            close = true;
            self.buf[head_end..].to_vec()
        };
        Ok((
            Response {
                status,
                headers,
                body,
            },
            close,
        ))
    }
}

/// The bytes of one request. `Host` is the target's `ip:port`.
fn request(method: &str, host: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: loadgen\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
        .into_bytes()
}

/// `http://ip:port` → (address, `ip:port`).
fn target(url: &str) -> (SocketAddr, String) {
    let host = url
        .strip_prefix("http://")
        .expect("only http:// URLs are supported")
        .trim_end_matches('/');
    let addr = host
        .parse()
        .unwrap_or_else(|_| panic!("{url}: expected http://<ip>:<port>"));
    (addr, host.to_string())
}

// ---------------------------------------------------------------------------------------------
// Command line.

#[derive(Parser)]
#[command(about = "HTTP/1.1 load generator for devicegate's benchmarks (see benches/README.md)")]
struct Cli {
    /// Tokio worker threads of the load generator.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// One request over N keep-alive connections, closed loop.
    Http {
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long, default_value = "/")]
        path: String,
        /// Request body; sent as application/x-www-form-urlencoded.
        #[arg(long)]
        body: Option<String>,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Stop after this many seconds ...
        #[arg(long)]
        duration: Option<f64>,
        /// ... or after this many requests in all.
        #[arg(long)]
        requests: Option<u64>,
        /// The status every answer must have (others count as errors).
        #[arg(long, default_value_t = 200)]
        expect: u16,
    },
    /// Many pending device grants, each polled at its interval.
    Poll(PollPlan),
    /// Complete device flows, approved over plain HTTP through the real IdP.
    E2e {
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "tv-app")]
        client_id: String,
        #[arg(long, default_value = "openid profile")]
        scope: String,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long, default_value_t = 15.0)]
        duration: f64,
        /// Seconds of flows left out of the figures.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let out = rt.block_on(async {
        match cli.mode {
            Mode::Http {
                url,
                method,
                path,
                body,
                concurrency,
                duration,
                requests,
                expect,
            } => {
                let (addr, host) = target(&url);
                let body = body.unwrap_or_default().into_bytes();
                let headers: &[(&str, &str)] = if body.is_empty() { &[] } else { &[FORM] };
                let req = request(&method, &host, &path, headers, &body);
                run_http(addr, req, concurrency, duration, requests, expect).await
            }
            Mode::Poll(p) => run_poll(p).await,
            Mode::E2e {
                url,
                client_id,
                scope,
                concurrency,
                duration,
                warmup,
            } => run_e2e(&url, &client_id, &scope, concurrency, duration, warmup).await,
        }
    });
    println!("{out}");
}

// ---------------------------------------------------------------------------------------------
// `http`: closed loop.

async fn run_http(
    addr: SocketAddr,
    req: Vec<u8>,
    concurrency: usize,
    duration: Option<f64>,
    requests: Option<u64>,
    expect: u16,
) -> Value {
    let req = Arc::new(req);
    let start = Instant::now();
    let deadline = duration.map(|d| start + Duration::from_secs_f64(d));
    let budget = Arc::new(AtomicU64::new(requests.unwrap_or(u64::MAX)));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (req, budget) = (req.clone(), budget.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut hist = Hist::new();
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            let mut errors = 0u64;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if budget
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_err()
                {
                    break;
                }
                let t = Instant::now();
                match conn.send(&req).await {
                    Ok(r) => {
                        hist.record(t.elapsed());
                        *statuses.entry(r.status).or_default() += 1;
                    }
                    Err(e) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("loadgen: {e}");
                        }
                    }
                }
            }
            (hist, statuses, errors)
        }));
    }
    let mut hist = Hist::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut errors = 0;
    for t in tasks {
        let (h, s, e) = t.await.expect("task");
        hist.merge(&h);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    let ok = statuses.get(&expect).copied().unwrap_or(0);
    let unexpected: u64 = statuses
        .iter()
        .filter(|(k, _)| **k != expect)
        .map(|(_, v)| v)
        .sum();
    json!({
        "mode": "http",
        "seconds": (secs * 1000.0).round() / 1000.0,
        "requests": hist.n,
        "ok": ok,
        "errors": errors + unexpected,
        "statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "rps": (ok as f64 / secs).round(),
        "latency": hist.summary(),
    })
}

// ---------------------------------------------------------------------------------------------
// `poll`: pending grants polled at their interval.

#[derive(clap::Args)]
struct PollPlan {
    #[arg(long)]
    url: String,
    /// Device authorization endpoint (devicegate: /device/code, oidc-provider: /device/auth).
    #[arg(long, default_value = "/device/code")]
    device_path: String,
    #[arg(long, default_value = "/token")]
    token_path: String,
    #[arg(long, default_value = "tv-app")]
    client_id: String,
    #[arg(long, default_value = "openid")]
    scope: String,
    #[arg(long, default_value_t = 10_000)]
    grants: usize,
    /// Connections the polls share.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Connections that create the grants.
    #[arg(long, default_value_t = 32)]
    create_concurrency: usize,
    /// Seconds of polling, warm-up included.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds of polling left out of the figures (connections opening, JIT warming).
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Poll this many milliseconds after the interval, so timer jitter never makes a poll
    /// early (a device must wait at least `interval` seconds, RFC 8628 §3.5).
    #[arg(long, default_value_t = 100)]
    margin_ms: u64,
    /// Used when the device authorization answer has no `interval` (RFC 8628 default: 5).
    #[arg(long, default_value_t = 5)]
    default_interval: u64,
    /// Processes whose CPU time (utime + stime) during the measured window is reported.
    #[arg(long = "cpu-pid")]
    cpu_pids: Vec<u32>,
    /// A shell command to run once the grants exist, before polling starts (e.g. to switch
    /// a profiler on: `callgrind_control -i on`).
    #[arg(long)]
    after_create: Option<String>,
}

/// utime + stime of a process (all its threads), in clock ticks (USER_HZ = 100 on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12) // fields 14 and 15 of /proc/<pid>/stat
}

/// Creates `n` device grants over `concurrency` connections; returns their device codes and
/// the interval the server asked for.
async fn create_grants(p: &PollPlan, addr: SocketAddr, host: &str) -> (Vec<String>, u64, f64) {
    let body = form(&[("client_id", &p.client_id), ("scope", &p.scope)]);
    let req = Arc::new(request("POST", host, &p.device_path, &[FORM], &body));
    let next = Arc::new(AtomicU64::new(0));
    let n = p.grants as u64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..p.create_concurrency.max(1) {
        let (req, next) = (req.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut got = Vec::new();
            while next.fetch_add(1, Ordering::AcqRel) < n {
                let r = conn.send(&req).await.expect("device authorization request");
                let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                assert_eq!(r.status, 200, "device authorization failed: {}", r.text());
                let code = v["device_code"].as_str().expect("device_code").to_string();
                got.push((code, v["interval"].as_u64()));
            }
            got
        }));
    }
    let mut codes = Vec::new();
    let mut interval = None;
    for t in tasks {
        for (c, i) in t.await.expect("task") {
            codes.push(c);
            interval = interval.or(i);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    (codes, interval.unwrap_or(p.default_interval), secs)
}

async fn run_poll(p: PollPlan) -> Value {
    let (addr, host) = target(&p.url);
    let (codes, interval, create_secs) = create_grants(&p, addr, &host).await;
    eprintln!(
        "loadgen: {} grants created in {create_secs:.1} s; polling each every {interval} s + {} ms",
        codes.len(),
        p.margin_ms
    );
    if let Some(cmd) = &p.after_create {
        let status = std::process::Command::new("sh").arg("-c").arg(cmd).status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "--after-create failed: {cmd}"
        );
    }
    let period = Duration::from_secs(interval) + Duration::from_millis(p.margin_ms);
    let t0 = Instant::now() + Duration::from_millis(200);
    let measure_from = t0 + Duration::from_secs_f64(p.warmup);
    let end = t0 + Duration::from_secs_f64(p.duration);
    let n = codes.len();
    // Grant i is due at t0 + i/n of the period, then every period; connection i % k sends it.
    let k = p.connections.clamp(1, n.max(1));
    let mut per_conn: Vec<Vec<(Duration, Vec<u8>)>> = vec![Vec::new(); k];
    for (i, code) in codes.iter().enumerate() {
        let offset = period.mul_f64(i as f64 / n as f64);
        let body = form(&[
            ("grant_type", DEVICE_GRANT),
            ("device_code", code),
            ("client_id", &p.client_id),
        ]);
        per_conn[i % k].push((
            offset,
            request("POST", &host, &p.token_path, &[FORM], &body),
        ));
    }
    // CPU of the processes under test over exactly the measured window.
    let pids = p.cpu_pids.clone();
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from).await;
        let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
        let t = Instant::now();
        tokio::time::sleep_until(end).await;
        let after: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
        let secs = t.elapsed().as_secs_f64();
        let ms: Vec<(u32, u64)> = pids
            .iter()
            .zip(before.iter().zip(after))
            .map(|(&pid, (b, a))| (pid, (a - b) * 10))
            .collect();
        (ms, secs)
    });
    let mut tasks = Vec::new();
    for polls in per_conn {
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut hist = Hist::new();
            let mut answers: BTreeMap<String, u64> = BTreeMap::new();
            let (mut errors, mut late, mut sent) = (0u64, 0u64, 0u64);
            let mut free_at = t0;
            'rounds: for round in 0u32.. {
                for (offset, req) in &polls {
                    let due = t0 + *offset + period * round;
                    if due >= end {
                        break 'rounds;
                    }
                    tokio::time::sleep_until(due).await;
                    // From when it was due if the connection was still busy then (the wait is
                    // the server's); else from now (the timer's lateness is not).
                    let from = if free_at > due { due } else { Instant::now() };
                    let result = conn.send(req).await;
                    free_at = Instant::now();
                    if due < measure_from {
                        continue;
                    }
                    sent += 1;
                    if free_at.duration_since(due) > Duration::from_millis(20) {
                        late += 1;
                    }
                    match result {
                        Ok(r) => {
                            hist.record(free_at.duration_since(from));
                            let answer = match (r.status, r.oauth_error()) {
                                (_, Some(e)) => e.to_string(),
                                (200, None) => "tokens".to_string(),
                                (s, None) => format!("status {s}"),
                            };
                            *answers.entry(answer).or_default() += 1;
                        }
                        Err(e) => {
                            errors += 1;
                            if errors <= 3 {
                                eprintln!("loadgen: poll: {e}");
                            }
                        }
                    }
                }
            }
            (hist, answers, errors, late, sent)
        }));
    }
    let mut hist = Hist::new();
    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    let (mut errors, mut late, mut sent) = (0, 0, 0);
    for t in tasks {
        let (h, a, e, l, s) = t.await.expect("task");
        hist.merge(&h);
        for (k, v) in a {
            *answers.entry(k).or_default() += v;
        }
        errors += e;
        late += l;
        sent += s;
    }
    let (cpu_ms, window) = cpu.await.expect("cpu task");
    let cpu_total: u64 = cpu_ms.iter().map(|(_, ms)| ms).sum();
    let polls = hist.n;
    json!({
        "mode": "poll",
        "grants": n,
        "create_seconds": (create_secs * 100.0).round() / 100.0,
        "interval_s": interval,
        "period_ms": period.as_millis() as u64,
        "window_s": (window * 100.0).round() / 100.0,
        "polls": polls,
        "sent": sent,
        "errors": errors,
        "answered_over_20ms_after_due": late,
        "answers": answers,
        "rps": (polls as f64 / window).round(),
        "latency": hist.summary(),
        "cpu_ms": cpu_ms.iter().map(|(pid, ms)| (pid.to_string(), json!(ms))).collect::<serde_json::Map<_, _>>(),
        "cpu_ms_per_1k_polls": if polls > 0 { (cpu_total as f64 * 1000.0 / polls as f64 * 100.0).round() / 100.0 } else { 0.0 },
    })
}

// ---------------------------------------------------------------------------------------------
// `e2e`: complete device flows approved over HTTP.

/// A browser's cookies for one origin: (name, value, path).
#[derive(Default)]
struct Jar(Vec<(String, String, String)>);

impl Jar {
    fn store(&mut self, resp: &Response) {
        for (k, v) in &resp.headers {
            if k != "set-cookie" {
                continue;
            }
            let mut parts = v.split(';');
            let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
                continue;
            };
            let (name, value) = (name.trim().to_string(), value.trim().to_string());
            let mut path = "/".to_string();
            let mut expired = value.is_empty();
            for attr in parts {
                let (a, val) = attr.split_once('=').unwrap_or((attr, ""));
                match a.trim().to_ascii_lowercase().as_str() {
                    "path" => path = val.trim().to_string(),
                    "max-age" => expired |= val.trim().starts_with('0') || val.contains('-'),
                    "expires" => expired |= val.contains("1970"),
                    _ => {}
                }
            }
            self.0.retain(|(n, _, p)| !(n == &name && p == &path));
            if !expired {
                self.0.push((name, value, path));
            }
        }
    }

    fn header(&self, path: &str) -> String {
        self.0
            .iter()
            .filter(|(_, _, p)| path.starts_with(p.as_str()))
            .map(|(n, v, _)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The steps of one flow, in order (the IdP's consent steps happen only when it asks).
const STEPS: &[&str] = &[
    "device: POST device authorization",
    "browser: GET verification page",
    "browser: POST user code (consent page)",
    "browser: POST Approve (303 to IdP)",
    "browser: GET IdP /auth (303 to login)",
    "browser: GET IdP login page",
    "browser: POST IdP login (303)",
    "browser: GET IdP /auth resume (303)",
    "browser: IdP consent (page + POST + resume)",
    "browser: GET callback (code exchange, ID token check)",
    "device: POST token poll (tokens delivered)",
];

/// One browser (a cookie jar and a connection) and one device, both talking to the gateway.
struct Flow<'a> {
    host: &'a str,
    origin: String,
    browser: Conn,
    device: Conn,
    jar: Jar,
    times: Vec<Duration>,
}

impl Flow<'_> {
    /// A browser request: cookies sent and stored; returns the response.
    async fn browse(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response, String> {
        let cookie = self.jar.header(path);
        let mut headers = vec![("Accept", "text/html")];
        if !cookie.is_empty() {
            headers.push(("Cookie", &cookie));
        }
        if body.is_some() {
            headers.push(FORM);
        }
        let req = request(
            method,
            self.host,
            path,
            &headers,
            body.as_deref().unwrap_or_default(),
        );
        let resp = self
            .browser
            .send(&req)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        self.jar.store(&resp);
        Ok(resp)
    }

    /// The path of a redirect's `Location` (absolute URLs must be on this origin).
    fn location(&self, resp: &Response, what: &str) -> Result<String, String> {
        if !(300..400).contains(&resp.status) {
            return Err(format!(
                "{what}: expected a redirect, got {}: {}",
                resp.status,
                resp.text().chars().take(300).collect::<String>()
            ));
        }
        let loc = resp
            .header("location")
            .ok_or(format!("{what}: no Location"))?;
        match loc.strip_prefix(&self.origin) {
            Some(rest) => Ok(rest.to_string()),
            None if loc.starts_with('/') => Ok(loc.to_string()),
            None => Err(format!("{what}: redirect off the origin: {loc}")),
        }
    }

    fn step(&mut self, t: &mut Instant, i: usize) {
        let now = Instant::now();
        self.times[i] += now.duration_since(*t);
        *t = now;
    }

    async fn run(&mut self, client_id: &str, scope: &str, user: &str) -> Result<(), String> {
        self.times = vec![Duration::ZERO; STEPS.len()];
        self.jar = Jar::default();
        let mut t = Instant::now();
        // 1. The device asks for a code.
        let body = form(&[("client_id", client_id), ("scope", scope)]);
        let req = request("POST", self.host, "/device/code", &[FORM], &body);
        let r = self
            .device
            .send(&req)
            .await
            .map_err(|e| format!("device code: {e}"))?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let (Some(user_code), Some(device_code)) =
            (v["user_code"].as_str(), v["device_code"].as_str())
        else {
            return Err(format!("device code: {} {}", r.status, r.text()));
        };
        let (user_code, device_code) = (user_code.to_string(), device_code.to_string());
        self.step(&mut t, 0);
        // 2-3. The user opens the page and types the code: the consent page, with its CSRF token.
        let r = self.browse("GET", "/device", None).await?;
        if r.status != 200 {
            return Err(format!("GET /device: {}", r.status));
        }
        self.step(&mut t, 1);
        let r = self
            .browse(
                "POST",
                "/device",
                Some(form(&[("action", "lookup"), ("user_code", &user_code)])),
            )
            .await?;
        let page = r.text();
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .ok_or_else(|| {
                format!(
                    "no CSRF token on the consent page ({}): {}",
                    r.status,
                    page.chars().take(300).collect::<String>()
                )
            })?
            .to_string();
        self.step(&mut t, 2);
        // 4. Approve: the gateway sends the browser to the IdP's authorization endpoint.
        let r = self
            .browse(
                "POST",
                "/device",
                Some(form(&[
                    ("action", "approve"),
                    ("user_code", &user_code),
                    ("csrf", &csrf),
                ])),
            )
            .await?;
        let mut next = self.location(&r, "Approve")?;
        self.step(&mut t, 3);
        // 5. The IdP's authorization endpoint (through the gateway) starts an interaction.
        let r = self.browse("GET", &next, None).await?;
        next = self.location(&r, "IdP /auth")?;
        self.step(&mut t, 4);
        // 6-8. Login page, login, resume; then consent while the IdP asks for it.
        let mut logged_in = false;
        for _ in 0..4 {
            if !next.starts_with("/interaction/") {
                break;
            }
            let page = self.browse("GET", &next, None).await?.text();
            let login = !logged_in && page.contains("name=\"login\"");
            self.step(&mut t, if login { 5 } else { 8 });
            let fields = if login {
                form(&[
                    ("prompt", "login"),
                    ("login", user),
                    ("password", "any-password"),
                ])
            } else {
                form(&[("prompt", "consent")])
            };
            let r = self.browse("POST", &next, Some(fields)).await?;
            next = self.location(&r, "IdP interaction")?;
            self.step(&mut t, if login { 6 } else { 8 });
            let r = self.browse("GET", &next, None).await?;
            next = self.location(&r, "IdP resume")?;
            self.step(&mut t, if login { 7 } else { 8 });
            logged_in |= login;
        }
        if !next.starts_with("/device/callback") {
            return Err(format!(
                "the IdP did not send the browser back to the callback: {next}"
            ));
        }
        // 9. The callback: the gateway exchanges the code and checks the ID token.
        let r = self.browse("GET", &next, None).await?;
        if r.status != 200 {
            return Err(format!(
                "callback: {} {}",
                r.status,
                r.text().chars().take(300).collect::<String>()
            ));
        }
        self.step(&mut t, 9);
        // 10. The device's next poll takes the tokens.
        let body = form(&[
            ("grant_type", DEVICE_GRANT),
            ("device_code", &device_code),
            ("client_id", client_id),
        ]);
        let req = request("POST", self.host, "/token", &[FORM], &body);
        let r = self
            .device
            .send(&req)
            .await
            .map_err(|e| format!("poll: {e}"))?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if r.status != 200 || v["access_token"].as_str().is_none() {
            return Err(format!("poll: {} {}", r.status, r.text()));
        }
        self.step(&mut t, 10);
        Ok(())
    }
}

async fn run_e2e(
    url: &str,
    client_id: &str,
    scope: &str,
    concurrency: usize,
    duration: f64,
    warmup: f64,
) -> Value {
    let (addr, host) = target(url);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = start + Duration::from_secs_f64(duration);
    let mut tasks = Vec::new();
    for w in 0..concurrency.max(1) {
        let (host, origin) = (host.clone(), url.trim_end_matches('/').to_string());
        let (client_id, scope) = (client_id.to_string(), scope.to_string());
        tasks.push(tokio::spawn(async move {
            let mut flow = Flow {
                host: &host,
                origin,
                browser: Conn::new(addr),
                device: Conn::new(addr),
                jar: Jar::default(),
                times: Vec::new(),
            };
            let mut steps: Vec<Hist> = vec![Hist::new(); STEPS.len()];
            let mut total = Hist::new();
            let (mut done, mut failed) = (0u64, 0u64);
            let mut i = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                let user = format!("user-{w}-{i}");
                i += 1;
                let result = flow.run(&client_id, &scope, &user).await;
                // Counted when it ends inside the window.
                let finished = Instant::now();
                if finished < measure_from || finished > end {
                    continue;
                }
                match result {
                    Ok(()) => {
                        done += 1;
                        total.record(t.elapsed());
                        for (h, d) in steps.iter_mut().zip(&flow.times) {
                            if !d.is_zero() {
                                h.record(*d);
                            }
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        if failed <= 3 {
                            eprintln!("loadgen: flow failed: {e}");
                        }
                        // Start the next flow on fresh connections.
                        flow.browser = Conn::new(addr);
                        flow.device = Conn::new(addr);
                    }
                }
            }
            (steps, total, done, failed)
        }));
    }
    let mut steps: Vec<Hist> = vec![Hist::new(); STEPS.len()];
    let mut total = Hist::new();
    let (mut done, mut failed) = (0, 0);
    for t in tasks {
        let (s, tt, d, f) = t.await.expect("task");
        for (a, b) in steps.iter_mut().zip(&s) {
            a.merge(b);
        }
        total.merge(&tt);
        done += d;
        failed += f;
    }
    let secs = end.duration_since(measure_from).as_secs_f64();
    let all_ns: f64 = steps.iter().map(|h| h.sum as f64).sum();
    let steps: Vec<Value> = STEPS
        .iter()
        .zip(&steps)
        .filter(|(_, h)| h.n > 0)
        .map(|(name, h)| {
            let mut s = h.summary();
            s["step"] = json!(name);
            s["share_pct"] = json!((h.sum as f64 * 1000.0 / all_ns).round() / 10.0);
            s
        })
        .collect();
    json!({
        "mode": "e2e",
        "concurrency": concurrency,
        "window_s": secs,
        "flows": done,
        "failed": failed,
        "flows_per_s": (done as f64 / secs * 10.0).round() / 10.0,
        "flow": total.summary(),
        "steps": steps,
    })
}
