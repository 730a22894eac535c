//! The residency capture: what leaves the box, seen on the wire.
//!
//! The vault runs two routes and a callback against recording servers on
//! 127.0.0.1 while `tshark` captures every packet of their ports, every
//! connection opened on the machine and every DNS query. 1,000 canary
//! values flow through the routes. The test then reads the capture back:
//! - no platform-bound stream carries a canary, in plain, lower-case,
//!   base64, hex or percent-encoded form, and each carries the tokens the
//!   platform recorded;
//! - every connection opened went to the vault or to a configured
//!   upstream or provider;
//! - no DNS query asked for a name the configuration does not hold;
//! - values appear only where they are meant to: the client's requests to
//!   the vault, and the callback's forward to the provider (which also
//!   shows that the capture sees payloads at all).
//!
//! A control run removes one field rule (the route reports unselected PII
//! instead of blocking it) and must be caught.
//!
//! Its own test binary: cargo runs test binaries one after another, so
//! nothing else talks on loopback while the capture runs. It needs root to
//! capture (CI is root) and skips, saying so, otherwise.
//!
//! Reproduce: `cargo test --locked --test residency -- --nocapture`

#![allow(clippy::unwrap_used, dead_code)]

#[path = "it/pg_cluster.rs"]
mod pg_cluster;
#[path = "it/support.rs"]
mod support;
#[path = "it/upstream.rs"]
mod upstream;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use support::*;
use upstream::Upstream;

/// One capture at a time: the checks read every connection on the machine.
static SERIAL: Mutex<()> = Mutex::new(());

const CALLBACK_SECRET: &[u8] = b"residency callback signing secret";

/// Profiles per request through the JSON route: 3 values each.
const PROFILES: usize = 10;
/// Requests through the JSON route (900 values) and the query route (100).
const REQUESTS: usize = 30;
const QUERY_REQUESTS: usize = 100;

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// A running `tshark` writing a capture file.
struct Capture {
    child: Child,
    file: PathBuf,
    log: PathBuf,
    /// tshark's one line per packet, as it captures.
    summaries: PathBuf,
    probe: u16,
}

/// One packet as `tshark -T fields` reads it back.
#[derive(Debug)]
struct Packet {
    stream: Option<u64>,
    src_port: Option<u16>,
    dst: String,
    dst_port: Option<u16>,
    syn_only: bool,
    /// The payload's sequence number, relative to the stream's start.
    seq: u64,
    payload: Vec<u8>,
    dns_names: Vec<String>,
}

impl Capture {
    /// Captures on every interface: whole TCP streams of `ports`, every
    /// connection attempt (a SYN without ACK) to any port, and DNS.
    /// Returns once a probe connection to `probe` shows in the capture:
    /// tshark says "Capturing on" before its first packets are kept.
    fn start(dir: &Path, ports: &[u16], probe: u16) -> Self {
        let file = dir.join("residency.pcapng");
        let log = dir.join("tshark.log");
        let summaries = dir.join("tshark.out");
        let ports: Vec<String> = ports.iter().map(|p| format!("tcp port {p}")).collect();
        let filter = format!(
            "(tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn) or port 53 or port 5353 or {}",
            ports.join(" or ")
        );
        let child = Command::new("tshark")
            .args(["-i", "any", "-B", "64", "-l", "-P", "-f", &filter, "-w"])
            .arg(&file)
            .stdout(fs::File::create(&summaries).unwrap())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("tshark runs (Debian's tshark package; .ci/run installs it)");
        let capture = Self {
            child,
            file,
            log,
            summaries,
            probe,
        };
        capture.mark();
        capture
    }

    /// Connects to the probe port until the capture shows a new packet:
    /// everything sent before is then in the capture too.
    fn mark(&self) {
        let seen = || fs::metadata(&self.summaries).map_or(0, |m| m.len());
        let before = seen();
        eventually("tshark captured a probe connection", || {
            drop(std::net::TcpStream::connect(("127.0.0.1", self.probe)));
            seen() > before
        });
    }

    /// Stops the capture (SIGINT flushes it) and reads every packet back.
    fn stop(mut self) -> Vec<Packet> {
        self.mark();
        assert!(signal(self.child.id(), "INT"));
        assert!(self.child.wait().unwrap().success());
        let out = Command::new("tshark")
            .arg("-r")
            .arg(&self.file)
            .args(["-T", "fields", "-E", "separator=|", "-E", "occurrence=a"])
            .args(["-e", "tcp.stream", "-e", "tcp.srcport", "-e", "ip.dst"])
            .args(["-e", "ipv6.dst", "-e", "tcp.dstport", "-e", "tcp.flags.syn"])
            .args([
                "-e",
                "tcp.flags.ack",
                "-e",
                "tcp.payload",
                "-e",
                "dns.qry.name",
            ])
            .args(["-e", "tcp.seq"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.split('|').collect();
                let flag = |s: &str| s == "1" || s == "True";
                let hex: String = f[7].chars().filter(|c| *c != ':').collect();
                Packet {
                    stream: f[0].parse().ok(),
                    src_port: f[1].parse().ok(),
                    dst: if f[2].is_empty() { f[3] } else { f[2] }.to_owned(),
                    dst_port: f[4].parse().ok(),
                    syn_only: flag(f[5]) && !flag(f[6]),
                    seq: f[9].parse().unwrap_or(0),
                    payload: hex::decode(hex).unwrap(),
                    dns_names: f[8]
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                        .collect(),
                }
            })
            .collect()
    }
}

/// The forms of `value` that would still give it away.
fn disguises(value: &str) -> Vec<Vec<u8>> {
    let encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    vec![
        value.as_bytes().to_vec(),
        value.to_lowercase().into_bytes(),
        B64.encode(value).into_bytes(),
        hex::encode(value).into_bytes(),
        encoded.into_bytes(),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The canaries: emails, phones and names.
fn canaries() -> Vec<(String, String, String)> {
    (0..REQUESTS * PROFILES)
        .map(|i| {
            (
                format!("resid{i}.canary@example.org"),
                format!("+1415555{i:04}"),
                format!("Canaryperson{i} Residency"),
            )
        })
        .collect()
}

fn query_canary(i: usize) -> String {
    format!("query{i}.canary@example.org")
}

/// What the capture showed.
struct Findings {
    /// Canary values seen in a platform-bound stream, by value.
    leaks: Vec<String>,
    /// Tokens the platform recorded that the capture did not show.
    tokens_missing: usize,
    tokens_seen: usize,
    /// Callback values seen in the provider stream (they should be).
    provider_values_seen: usize,
    /// Connection attempts to somewhere not configured.
    unexpected_connections: Vec<String>,
    /// DNS names asked that are not configured.
    unexpected_names: Vec<String>,
    /// Canaries seen in the client's requests (the capture works).
    client_canaries_seen: usize,
}

/// Runs the vault with two routes and a callback while the capture runs.
/// `control` drops the route's name rule and lets the route report
/// unselected PII instead of blocking it: a leak the checks must catch.
fn run(control: bool) -> Findings {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (events, profiles, provider) = (Upstream::start(), Upstream::start(), Upstream::start());
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("callback.secret");
    fs::write(&secret, format!("whsec_{}\n", B64.encode(CALLBACK_SECRET))).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let name_rule = if control {
        "unselected_pii = \"report\"\n"
    } else {
        "{ select = \"$.d[*].profileData.Name\", class = \"name\" },\n"
    };
    let (rules, policy) = if control {
        ("", name_rule)
    } else {
        (name_rule, "")
    };
    let profiles_port = port_of(&profiles.url);
    let sections = format!(
        r#"
[[routes]]
name = "events"
path_prefix = "/events"
upstream = "{events}"
insecure_allow_http_upstream = true
namespace = "retail"
clients = ["crm"]
{policy}
fields = [
  {{ select = "$.d[*].profileData.Email", class = "email" }},
  {{ select = "$.d[*].profileData.Phone", class = "phone" }},
  {rules}]

[[routes]]
name = "profiles"
path_prefix = "/profiles"
upstream = "http://localhost:{profiles_port}"
upstream_addresses = ["127.0.0.0/8", "::1/128"]
insecure_allow_http_upstream = true
namespace = "retail"
clients = ["crm"]
fields = [ {{ query = "email", class = "email" }}, {{ select = "$.email", class = "email" }} ]

[[callbacks]]
name = "sms"
path = "/callbacks/sms"
namespace = "retail"
purpose = "sms_delivery"
role = "sms_worker"
secret_file = "{secret}"
forward = "{provider}/send"
insecure_allow_http_upstream = true
fields = [ {{ select = "$.to" }}, {{ select = "$.profile.name" }} ]
"#,
        events = events.url,
        provider = provider.url,
        secret = secret.display(),
    );
    let setup = Setup::new_with("", &sections);
    let server = setup.serve();
    let vault_port = port_of(&server.url(""));
    let upstream_ports = [port_of(&events.url), profiles_port];
    let provider_port = port_of(&provider.url);
    let capture = Capture::start(
        secrets.path(),
        &[
            vault_port,
            upstream_ports[0],
            upstream_ports[1],
            provider_port,
        ],
        vault_port,
    );

    let client = http();
    let canaries = canaries();
    for chunk in canaries.chunks(PROFILES) {
        let d: Vec<Value> = chunk
            .iter()
            .map(|(email, phone, name)| {
                json!({"type": "profile", "profileData":
                    {"Email": email, "Phone": phone, "Name": name, "Tier": "gold"}})
            })
            .collect();
        let response = client
            .post(server.url("/events/1/upload"))
            .bearer_auth(key("crm"))
            .json(&json!({ "d": d }))
            .send()
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().unwrap());
    }
    for i in 0..QUERY_REQUESTS {
        let email = query_canary(i);
        let response = client
            .post(server.url("/profiles/1/profile"))
            .query(&[("email", email.as_str())])
            .bearer_auth(key("crm"))
            .json(&json!({ "email": email, "visits": i }))
            .send()
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().unwrap());
    }
    // The activation path: values go to the provider, and only there.
    let (phone, name) = ("+14155559876", "Provider Onlyrecipient");
    let (status, tokens) = post(
        &server,
        "/v1/tokenize",
        &key("crm"),
        &json!({"namespace": "retail", "items": [
            {"class": "phone", "value": phone}, {"class": "name", "value": name}]}),
    );
    assert_eq!(status, 200, "{tokens}");
    let body = json!({"to": tokens["tokens"][0]["token"], "profile": {"name": tokens["tokens"][1]["token"]},
        "message": "your order shipped"})
    .to_string();
    let timestamp = unix_now();
    let response = client
        .post(server.url("/callbacks/sms"))
        .header("content-type", "application/json")
        .header("webhook-id", "msg_residency")
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            webhook_signature(CALLBACK_SECRET, "msg_residency", timestamp, body.as_bytes()),
        )
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().unwrap());
    let packets = capture.stop();
    drop(server);

    // Every stream's bytes, each direction reassembled by sequence number
    // (a packet seen twice on `any`, or sent again, counts once).
    type Direction = BTreeMap<u64, Vec<u8>>;
    let mut streams: BTreeMap<(u64, Option<u16>), (BTreeSet<u16>, Direction)> = BTreeMap::new();
    for packet in packets.iter().filter(|p| !p.payload.is_empty()) {
        if let Some(stream) = packet.stream {
            let entry = streams.entry((stream, packet.src_port)).or_default();
            entry.0.extend(packet.src_port);
            entry.0.extend(packet.dst_port);
            entry.1.insert(packet.seq, packet.payload.clone());
        }
    }
    let bytes_to = |ports: &[u16]| -> Vec<u8> {
        streams
            .values()
            .filter(|(seen, _)| ports.iter().any(|p| seen.contains(p)))
            .flat_map(|(_, direction)| direction.values().flatten().copied().chain([0]))
            .collect()
    };
    let platform = bytes_to(&upstream_ports);
    let to_provider = bytes_to(&[provider_port]);
    let to_vault = bytes_to(&[vault_port]);
    let mut values: Vec<String> = canaries
        .iter()
        .flat_map(|(e, p, n)| [e.clone(), p.clone(), n.clone()])
        .collect();
    values.extend((0..QUERY_REQUESTS).map(query_canary));
    values.extend([phone.to_owned(), name.to_owned()]);
    let leaks = values
        .iter()
        .filter(|v| disguises(v).iter().any(|d| contains(&platform, d)))
        .cloned()
        .collect();
    // The tokens the platform recorded must be in what the capture saw.
    let recorded: Vec<String> = events
        .take()
        .iter()
        .chain(profiles.take().iter())
        .flat_map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            let mut found = vec![];
            if let Some(d) = body["d"].as_array() {
                for record in d {
                    found.push(record["profileData"]["Email"].as_str().unwrap().to_owned());
                    found.push(record["profileData"]["Phone"].as_str().unwrap().to_owned());
                }
            }
            found.extend(body["email"].as_str().map(str::to_owned));
            found
        })
        .collect();
    assert_eq!(recorded.len(), REQUESTS * PROFILES * 2 + QUERY_REQUESTS);
    let tokens_seen = recorded
        .iter()
        .filter(|t| contains(&platform, t.as_bytes()))
        .count();
    let provider_values_seen = [phone, name]
        .iter()
        .filter(|v| contains(&to_provider, v.as_bytes()))
        .count();
    let client_canaries_seen = canaries
        .iter()
        .filter(|(email, _, _)| contains(&to_vault, email.as_bytes()))
        .count();
    let allowed_ports = [
        vault_port,
        upstream_ports[0],
        upstream_ports[1],
        provider_port,
    ];
    let unexpected_connections = packets
        .iter()
        .filter(|p| p.syn_only)
        .filter(|p| {
            let loopback = p.dst == "127.0.0.1" || p.dst == "::1";
            !(loopback && p.dst_port.is_some_and(|port| allowed_ports.contains(&port)))
        })
        .map(|p| format!("{}:{:?}", p.dst, p.dst_port))
        .collect();
    let configured_names = ["localhost"];
    let unexpected_names = packets
        .iter()
        .flat_map(|p| p.dns_names.iter())
        .filter(|n| !configured_names.contains(&n.as_str()))
        .cloned()
        .collect();
    Findings {
        leaks,
        tokens_missing: recorded.len() - tokens_seen,
        tokens_seen,
        provider_values_seen,
        unexpected_connections,
        unexpected_names,
        client_canaries_seen,
    }
}

#[test]
fn only_tokens_leave_for_the_platform() {
    if !is_root() {
        eprintln!(
            "SKIPPED: the residency capture needs root to capture packets (CI runs it as root)"
        );
        return;
    }
    let found = run(false);
    eprintln!(
        "residency: {} tokens seen going to the platform, {} canaries seen arriving from the client, {} values seen going to the provider",
        found.tokens_seen, found.client_canaries_seen, found.provider_values_seen
    );
    // The capture sees payloads: the client's values and the provider's.
    assert_eq!(found.client_canaries_seen, REQUESTS * PROFILES);
    assert_eq!(
        found.provider_values_seen, 2,
        "the provider gets the values"
    );
    assert!(
        found.leaks.is_empty(),
        "values left for the platform: {:?}",
        found.leaks
    );
    assert_eq!(
        found.tokens_missing, 0,
        "every recorded token was on the wire"
    );
    assert!(
        found.unexpected_connections.is_empty(),
        "connections to places not configured: {:?}",
        found.unexpected_connections
    );
    assert!(
        found.unexpected_names.is_empty(),
        "DNS queries for names not configured: {:?}",
        found.unexpected_names
    );
}

#[test]
fn the_capture_catches_a_route_that_lets_a_value_out() {
    if !is_root() {
        eprintln!(
            "SKIPPED: the residency capture needs root to capture packets (CI runs it as root)"
        );
        return;
    }
    let found = run(true);
    // Every name went out in clear: the checks see each one.
    assert_eq!(
        found.leaks.len(),
        REQUESTS * PROFILES,
        "{:?}",
        &found.leaks[..3.min(found.leaks.len())]
    );
    assert!(found.leaks.iter().all(|v| v.starts_with("Canaryperson")));
}
