//! End to end: the LNVPS simulator and the daemon on ephemeral loopback ports, talking
//! real HTTP. /metrics must equal the simulator's state and follow it; faults must leave
//! the last good values with the failure visible; recovery must bring it back.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{wait_for, Exposition, Harness, RecordingNotifier};
use vpswatch_model::clock::SystemClock;
use vpswatch_sim::lnvps::{EndpointMatch, Fault, FaultKind, Scenario, VmState};

const T: Duration = Duration::from_secs(20);

fn vm(id: &str) -> [(&'static str, &str); 1] {
    [("vm", id)]
}

fn approx(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-9)
}

/// The request counter for one endpoint and code.
fn requests(exp: &Exposition, endpoint: &str, code: &str) -> f64 {
    exp.get(
        "vpswatch_provider_requests_total",
        &[("endpoint", endpoint), ("code", code)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_equal_and_follow_the_simulator() {
    let h = Harness::start("demo").await;
    let exp = h
        .wait_metrics("first poll with usage", T, |e| {
            e.has("vps_cpu_usage_ratio", &vm("1")) && e.has("vps_up", &vm("1"))
        })
        .await;

    for sim_vm in h.sim.vms() {
        let id = sim_vm.id.to_string();
        let l = vm(&id);
        // State: one series per known state, 1 for the current one.
        assert_eq!(
            exp.get(
                "vps_state",
                &[("vm", &id), ("state", sim_vm.state.as_str())]
            ),
            Some(1.0),
            "state of vm {id}"
        );
        let up = if sim_vm.state == VmState::Running {
            1.0
        } else {
            0.0
        };
        assert_eq!(exp.get("vps_up", &l), Some(up), "vps_up of vm {id}");
        // Expiry, to the second.
        let expires = sim_vm.expires.expect("demo VMs are paid").timestamp() as f64;
        assert_eq!(exp.get("vps_expiry_timestamp_seconds", &l), Some(expires));
        // Price in major units: the simulator speaks millisats and cents like the real server.
        let cost = &sim_vm.template.cost;
        let major = if cost.currency == "BTC" {
            cost.amount as f64 / 1e11
        } else {
            cost.amount as f64 / 100.0
        };
        let price = exp
            .get(
                "vps_renewal_price",
                &[("vm", &id), ("currency", &cost.currency)],
            )
            .expect("price");
        assert!(
            approx(price, major, 1e-9),
            "price of vm {id}: {price} vs {major}"
        );
        assert_eq!(
            exp.get("vps_cpus", &l),
            Some(f64::from(sim_vm.template.cpu))
        );
        assert_eq!(
            exp.get("vps_memory_bytes", &l),
            Some(sim_vm.template.memory as f64)
        );
        // Usage equals the simulator's value at the point vpswatch chose.
        if sim_vm.state == VmState::Running {
            let at = exp
                .get("vps_usage_timestamp_seconds", &l)
                .expect("usage time") as i64;
            let want = sim_vm.usage_at(at);
            let cpu = exp.get("vps_cpu_usage_ratio", &l).expect("cpu");
            assert!(
                approx(cpu, want.cpu, 1e-5),
                "cpu of vm {id}: {cpu} vs {}",
                want.cpu
            );
            let mem = exp.get("vps_memory_usage_bytes", &l).expect("mem");
            let want_mem = want.memory * sim_vm.template.memory as f64;
            assert!(
                approx(mem, want_mem, 1e-4),
                "mem of vm {id}: {mem} vs {want_mem}"
            );
            let rx = exp
                .get("vps_network_receive_bytes_per_second", &l)
                .expect("rx");
            assert!(
                approx(rx, want.net_in, 1e-4),
                "rx of vm {id}: {rx} vs {}",
                want.net_in
            );
            let wr = exp
                .get("vps_disk_write_bytes_per_second", &l)
                .expect("disk write");
            assert!(approx(wr, want.disk_write, 1e-4));
            // The point is complete: its minute is over.
            assert!(at + 60 <= chrono::Utc::now().timestamp() + 1);
        } else {
            assert!(
                !exp.has("vps_cpu_usage_ratio", &l),
                "no usage for a non-running VM"
            );
        }
    }

    // The scenario changes: a VM stops, another gets a new expiry, a third disappears.
    let new_expiry = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0)
        .expect("valid time")
        + chrono::Duration::days(3);
    h.sim.update_vm(1, |v| v.state = VmState::Stopped);
    h.sim.update_vm(2, |v| v.expires = Some(new_expiry));
    h.sim.remove_vm(4);
    let want_expiry = new_expiry.timestamp() as f64;
    h.wait_metrics("metrics follow the change", T, |e| {
        e.get("vps_state", &[("vm", "1"), ("state", "stopped")]) == Some(1.0)
            && e.get("vps_up", &vm("1")) == Some(0.0)
            && e.get("vps_expiry_timestamp_seconds", &vm("2")) == Some(want_expiry)
            && !e.has("vps_info", &vm("4"))
            && !e.has("vps_state", &vm("4"))
    })
    .await;
    h.shutdown().await;
}

#[tokio::test]
async fn every_signed_request_passes_the_simulator_checks() {
    let h = Harness::start("demo").await;
    // Several polls, each many requests signed within the same second.
    h.wait_metrics("three polls", T, |e| {
        requests(e, "GET /api/v1/vm", "200") >= 3.0
    })
    .await;
    let log = h.sim.requests();
    assert!(log.len() > 10, "expected traffic, got {}", log.len());
    let rejected: Vec<_> = log
        .iter()
        .filter(|r| r.status == 401 || r.status == 403)
        .collect();
    assert!(rejected.is_empty(), "rejected requests: {rejected:?}");
    for endpoint in [
        "/api/v1/vm",
        "/api/v1/vm/{id}/time-series",
        "/api/v1/account",
        "/api/v1/payment-methods",
        "/api/v1/subscriptions",
    ] {
        assert!(
            log.iter()
                .any(|r| r.endpoint == endpoint && r.status == 200),
            "no successful {endpoint}"
        );
    }
    h.shutdown().await;
}

#[tokio::test]
async fn faults_keep_last_good_values_then_recover() {
    let h = Harness::start("demo").await;
    h.wait_metrics("first poll", T, |e| {
        e.get("vpswatch_provider_up", &[]) == Some(1.0) && e.has("vps_cpu_usage_ratio", &vm("1"))
    })
    .await;
    let cases: Vec<(FaultKind, &str)> = vec![
        (FaultKind::Status(500), "500"),
        (FaultKind::Status(502), "502"),
        (FaultKind::Status(503), "503"),
        (FaultKind::MalformedJson, "invalid_response"),
        (FaultKind::TruncatedBody, "invalid_response"),
        (FaultKind::WrongContentType, "invalid_response"),
        (FaultKind::Unauthorized, "401"),
        (FaultKind::Hang, "timeout"),
        (FaultKind::Latency(Duration::from_secs(3)), "timeout"),
    ];
    for (kind, code) in cases {
        let before = Exposition::parse(&h.metrics().await);
        let count_before = requests(&before, "GET /api/v1/vm", code);
        h.sim.inject_fault(Fault::new(
            EndpointMatch::template("/api/v1/vm"),
            kind.clone(),
        ));
        let exp = h
            .wait_metrics(&format!("{kind:?} makes the provider down"), T, |e| {
                e.get("vpswatch_provider_up", &[]) == Some(0.0)
                    && requests(e, "GET /api/v1/vm", code) > count_before
            })
            .await;
        // Last good values are still served, with the age visible.
        assert_eq!(exp.get("vps_up", &vm("1")), Some(1.0), "{kind:?}");
        assert!(exp.has("vps_cpu_usage_ratio", &vm("1")), "{kind:?}");
        assert!(
            exp.get("vpswatch_provider_consecutive_failures", &[])
                .unwrap_or(0.0)
                >= 1.0,
            "{kind:?}"
        );
        let last_ok = exp
            .get("vpswatch_provider_last_success_timestamp_seconds", &[])
            .expect("last success");
        assert!(last_ok > 0.0);
        h.sim.clear_faults();
        h.wait_metrics(&format!("recovery after {kind:?}"), T, |e| {
            e.get("vpswatch_provider_up", &[]) == Some(1.0)
                && e.get("vpswatch_provider_last_success_timestamp_seconds", &[])
                    .unwrap_or(0.0)
                    > last_ok
        })
        .await;
    }
    h.shutdown().await;
}

#[tokio::test]
async fn one_vm_failing_time_series_does_not_fail_the_account() {
    let h = Harness::start("demo").await;
    h.wait_metrics("first poll", T, |e| e.has("vps_cpu_usage_ratio", &vm("2")))
        .await;
    h.sim.inject_fault(Fault::new(
        EndpointMatch::vm("/api/v1/vm/{id}/time-series", 2),
        FaultKind::Status(500),
    ));
    let exp = h
        .wait_metrics("vm 2 loses its usage", T, |e| {
            !e.has("vps_cpu_usage_ratio", &vm("2"))
        })
        .await;
    assert_eq!(exp.get("vpswatch_provider_up", &[]), Some(1.0));
    assert!(
        exp.has("vps_cpu_usage_ratio", &vm("1")),
        "other VMs keep usage"
    );
    assert!(
        exp.has("vps_info", &vm("2")),
        "vm 2 itself is still exported"
    );
    assert!(requests(&exp, "GET /api/v1/vm/{id}/time-series", "500") >= 1.0);
    h.shutdown().await;
}

#[tokio::test]
async fn rate_limit_is_honoured_with_retry_after() {
    let h = Harness::start("demo").await;
    h.wait_metrics("first poll", T, |e| {
        e.get("vpswatch_provider_up", &[]) == Some(1.0)
    })
    .await;
    h.sim.clear_requests();
    h.sim.inject_fault(
        Fault::new(
            EndpointMatch::template("/api/v1/vm"),
            FaultKind::RateLimited {
                retry_after_secs: 2,
            },
        )
        .times(1),
    );
    let exp = h
        .wait_metrics("the 429 is counted and the poll still succeeds", T, |e| {
            requests(e, "GET /api/v1/vm", "429") >= 1.0
                && e.get("vpswatch_provider_consecutive_failures", &[]) == Some(0.0)
                && h.sim
                    .requests()
                    .iter()
                    .any(|r| r.endpoint == "/api/v1/vm" && r.status == 200)
        })
        .await;
    assert_eq!(exp.get("vpswatch_provider_up", &[]), Some(1.0));
    // Nothing at all was sent to the provider during the retry-after pause.
    let log = h.sim.requests();
    let throttled = log
        .iter()
        .find(|r| r.status == 429)
        .expect("a 429 was sent");
    let next = log
        .iter()
        .filter(|r| r.at > throttled.at && r.status != 429)
        .map(|r| r.at)
        .min()
        .expect("a request after the 429");
    let gap = (next - throttled.at).num_milliseconds();
    assert!(gap >= 1900, "next request only {gap} ms after the 429");
    h.shutdown().await;
}

/// The account's request budget, per minute.
const BUDGET_PER_MINUTE: u32 = 240;
/// The simulator's fixed window, short so the test sees several in seconds.
const LIMIT_WINDOW: Duration = Duration::from_secs(5);
/// Requests the simulator allows per window: what a 240/min budget may send in any 5 s
/// (its burst of 240/60 = 4 plus 240 * 5/60 = 20 at the steady rate) and 2 more, because
/// the server counts arrivals and a busy host can bunch a request or two that left paced.
const WINDOW_LIMIT: u32 = 26;
/// Polls to wait for: at 7 requests a poll (list, 3 running VMs' time series, account,
/// payment methods, subscriptions) 6 polls need 42 requests, far more than one window
/// allows, so an unpaced client (one poll every 200 ms) is throttled within a second.
const PACED_POLLS: f64 = 6.0;

#[tokio::test]
async fn simulator_rate_limit_is_never_hit_within_budget() {
    let h = Harness::start_with(
        |owner| {
            let mut s = Scenario::demo(owner);
            s.rate_limit.per_minute = WINDOW_LIMIT;
            s.rate_limit.window = LIMIT_WINDOW;
            s
        },
        &format!("[providers.lnvps]\nrequests_per_minute = {BUDGET_PER_MINUTE}\n"),
        Arc::new(SystemClock),
    )
    .await;
    // Ends at the first 429 as well, so a throttled run fails on what it got, not on time.
    let exp = h
        .wait_metrics("six polls, or a 429", Duration::from_secs(40), |e| {
            requests(e, "GET /api/v1/vm", "200") >= PACED_POLLS
                || h.sim.requests().iter().any(|r| r.status == 429)
        })
        .await;
    let log = h.sim.requests();
    let throttled = log.iter().filter(|r| r.status == 429).count();
    assert_eq!(
        throttled,
        0,
        "the simulator answered 429 to {throttled} of {} requests",
        log.len()
    );
    // The polls went through whole.
    assert!(requests(&exp, "GET /api/v1/vm", "200") >= PACED_POLLS);
    assert_eq!(exp.get("vpswatch_provider_up", &[]), Some(1.0));
    assert_eq!(
        exp.get("vpswatch_provider_consecutive_failures", &[]),
        Some(0.0)
    );
    for id in ["1", "2", "4"] {
        assert!(exp.has("vps_cpu_usage_ratio", &vm(id)), "usage of vm {id}");
    }
    // More was asked than one window allows, so the requests must have been spread:
    // no interval of one window's length (wherever it starts) holds more than the limit.
    assert!(
        log.len() > WINDOW_LIMIT as usize,
        "only {} requests: the test did not demand more than one window",
        log.len()
    );
    let mut at: Vec<_> = log.iter().map(|r| r.at).collect();
    at.sort();
    let window = chrono::Duration::from_std(LIMIT_WINDOW).expect("window");
    let busiest = (0..at.len())
        .map(|i| at[i..].iter().take_while(|t| **t < at[i] + window).count())
        .max()
        .unwrap_or(0);
    assert!(
        busiest <= WINDOW_LIMIT as usize,
        "{busiest} requests within {LIMIT_WINDOW:?} (limit {WINDOW_LIMIT}): {at:?}"
    );
    h.shutdown().await;
}

/// A TCP gate between the daemon and the simulator: it accepts connections, says when
/// the first one arrives, and holds every one until [`open`](Gate::open) names where to
/// forward it. While it holds, the daemon's first poll provably cannot finish.
struct Gate {
    addr: std::net::SocketAddr,
    arrived: Arc<tokio::sync::Notify>,
    target: tokio::sync::watch::Sender<Option<std::net::SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    async fn start() -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gate");
        let addr = listener.local_addr().expect("gate addr");
        let arrived = Arc::new(tokio::sync::Notify::new());
        let (target, _) = tokio::sync::watch::channel(None);
        let task = {
            let (arrived, target) = (arrived.clone(), target.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    arrived.notify_one();
                    let mut to = target.subscribe();
                    tokio::spawn(async move {
                        let Ok(Some(addr)) = to.wait_for(Option::is_some).await.map(|a| *a) else {
                            return;
                        };
                        if let Ok(mut upstream) = tokio::net::TcpStream::connect(addr).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await;
                        }
                    });
                }
            })
        };
        Gate {
            addr,
            arrived,
            target,
            task,
        }
    }

    fn open(&self, to: std::net::SocketAddr) {
        self.target.send_replace(Some(to));
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn http_endpoints_ready_healthy_landing_gzip() {
    // The daemon reaches the simulator through a gate that holds its first poll, with
    // timeouts long enough that only opening the gate lets that poll end.
    let gate = Gate::start().await;
    let gate_url: url::Url = format!("http://{}/", gate.addr).parse().expect("gate url");
    let h = Harness::start_tweaked(
        Scenario::demo,
        "",
        Arc::new(SystemClock),
        Arc::new(RecordingNotifier::default()),
        |c| {
            c.request_timeout = Duration::from_secs(120);
            c.poll_timeout = Duration::from_secs(120);
            c.accounts[0].base_url = gate_url;
        },
    )
    .await;
    tokio::time::timeout(T, gate.arrived.notified())
        .await
        .expect("the daemon's first poll reaches the gate");
    let ready = h.http.get(h.url("/-/ready")).send().await.expect("ready");
    assert_eq!(ready.status(), 503, "ready while the first poll is pending");
    let body = ready.text().await.expect("ready body");
    assert!(
        body.contains("first poll pending") && body.contains("lnvps/main"),
        "{body}"
    );
    gate.open(h.sim.addr());
    wait_for("ready", T, || async {
        h.http
            .get(h.url("/-/ready"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    let healthy = h
        .http
        .get(h.url("/-/healthy"))
        .send()
        .await
        .expect("healthy");
    assert_eq!(healthy.status(), 200);
    let landing = h.http.get(h.url("/")).send().await.expect("landing");
    assert!(landing
        .text()
        .await
        .unwrap_or_default()
        .contains("/metrics"));
    assert_eq!(
        h.http
            .get(h.url("/nope"))
            .send()
            .await
            .expect("404")
            .status(),
        404
    );
    assert_eq!(
        h.http
            .post(h.url("/metrics"))
            .send()
            .await
            .expect("405")
            .status(),
        405
    );

    // gzip when asked for, identical content once decompressed.
    let raw = h
        .http
        .get(h.url("/metrics"))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .expect("gzip scrape");
    assert_eq!(
        raw.headers().get("content-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    assert!(raw
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("version=0.0.4")));
    let compressed = raw.bytes().await.expect("body");
    let mut plain = String::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut plain)
        .expect("valid gzip");
    assert!(plain.contains("vpswatch_build_info"));
    h.shutdown().await;
}

#[tokio::test]
async fn hostile_response_sizes_are_refused_not_allocated() {
    let h = Harness::start_with(
        |owner| Scenario::bench(300, owner),
        "max_response_bytes = 65536\n",
        Arc::new(SystemClock),
    )
    .await;
    // 300 VMs make the list far larger than 64 KiB: refused with a clear error.
    h.wait_metrics("oversized list refused", T, |e| {
        e.get("vpswatch_provider_up", &[]) == Some(0.0)
            && requests(e, "GET /api/v1/vm", "invalid_response") >= 1.0
    })
    .await;
    h.shutdown().await;
}

#[tokio::test]
async fn retries_are_signed_afresh() {
    let h = Harness::start("demo").await;
    h.wait_metrics("first poll", T, |e| {
        e.get("vpswatch_provider_up", &[]) == Some(1.0)
    })
    .await;
    h.sim.clear_requests();
    // Two 500s in a row: the third attempt must succeed, which it can only do with a
    // new event (the server burns every event id, even when the handler fails).
    h.sim.inject_fault(
        Fault::new(
            EndpointMatch::template("/api/v1/vm"),
            FaultKind::Status(500),
        )
        .times(2),
    );
    wait_for("the retried list succeeds", T, || async {
        let log = h.sim.requests();
        log.iter()
            .filter(|r| r.endpoint == "/api/v1/vm" && r.status == 500)
            .count()
            == 2
            && log
                .iter()
                .any(|r| r.endpoint == "/api/v1/vm" && r.status == 200)
    })
    .await;
    let log = h.sim.requests();
    assert!(
        log.iter().all(|r| r.status != 401),
        "a retry was rejected: {log:?}"
    );
    let exp = Exposition::parse(&h.metrics().await);
    assert_eq!(
        exp.get("vpswatch_provider_consecutive_failures", &[]),
        Some(0.0)
    );
    h.shutdown().await;
}

#[tokio::test]
async fn host_clock_skew_beyond_60s_is_reported_and_recovers() {
    let h = Harness::start("demo").await;
    h.wait_metrics("first poll", T, |e| {
        e.get("vpswatch_provider_up", &[]) == Some(1.0)
    })
    .await;
    for skew in [90, -90] {
        h.sim.set_clock_skew(skew);
        h.wait_metrics(&format!("skew {skew}s rejected"), T, |e| {
            e.get("vpswatch_provider_up", &[]) == Some(0.0)
                && requests(e, "GET /api/v1/vm", "401") >= 1.0
        })
        .await;
        // The last good values are still served.
        let exp = Exposition::parse(&h.metrics().await);
        assert!(exp.has("vps_info", &vm("1")));
        h.sim.set_clock_skew(0);
        h.wait_metrics("recovered", T, |e| {
            e.get("vpswatch_provider_up", &[]) == Some(1.0)
        })
        .await;
    }
    h.shutdown().await;
}
