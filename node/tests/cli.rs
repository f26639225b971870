//! The `murmur` binary as a user runs it: `serve`, `sub`, `pub`, `--help`, and SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{spawn_subscriber, wait_with_timeout};

const BIN: &str = env!("CARGO_BIN_EXE_murmur");

/// A `murmur serve` process, killed if the test ends early.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// The admin port: `/metrics`, `/v1/cluster`.
    admin: SocketAddr,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        Self::start_with_env(&[&["--name", "cli-test"], extra].concat(), &[])
    }

    fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        // Ask the OS for free ports, then hand them to the node.
        let (addr, admin) = (free_port(), free_port());
        let child = Command::new(BIN)
            .args(["serve", "--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--gossip", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
            .args(extra)
            .env_remove("MURMUR_CONFIG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("murmur serve starts");
        let server = Self { child, addr, admin };
        server.wait_healthy();
        server
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn wait_healthy(&self) {
        wait_healthy(self.addr);
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "murmur did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

fn wait_healthy(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if http_status(addr, "/healthz") == Some(200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("murmur serve did not become healthy on {addr}");
}

fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

fn murmur(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("MURMUR_URL")
        .output()
        .expect("murmur runs")
}

#[test]
fn sub_prints_events_that_pub_sends() {
    let server = Server::start(&[]);
    let url = server.url();
    // `sub` says so on stderr once its subscription is in place.
    let sub = spawn_subscriber(BIN, &["chat.*", "--url", &url, "--count", "3"], "chat.*");

    let one = murmur(&["pub", "chat.lobby", r#"{"text":"hi"}"#, "--url", &url]);
    assert!(one.status.success(), "{one:?}");
    let said = String::from_utf8_lossy(&one.stderr);
    assert!(said.contains("seq 1"), "{said}");

    let mut from_stdin = Command::new(BIN)
        .args(["pub", "chat.room", "-", "--url", &url])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    from_stdin
        .stdin
        .take()
        .unwrap()
        .write_all(b"plain words\n{\"n\":2}\n")
        .unwrap();
    let out = from_stdin.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // Each topic counts from 1: the two lines on chat.room are its seqs 1 and 2.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("published 2 events to chat.room: epoch ") && said.contains(" seq 1..=2"),
        "{said}"
    );

    let out = wait_with_timeout(sub, Duration::from_secs(20));
    assert!(out.status.success(), "{out:?}");
    let events: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["topic"], "chat.lobby");
    assert_eq!(events[0]["data"]["text"], "hi");
    assert_eq!(events[1]["data"], "plain words");
    assert_eq!(events[2]["data"]["n"], 2);
    assert_eq!(events[2]["seq"], 2);

    let status = server.terminate();
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}");
}

#[test]
fn pub_reports_refusals_and_unreachable_nodes() {
    let server = Server::start(&[]);
    let bad = murmur(&["pub", "no.*.wildcards", "1", "--url", &server.url()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid_topic"));

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = murmur(&[
        "pub",
        "a",
        "1",
        "--url",
        &format!("ws://127.0.0.1:{port}/ws"),
    ]);
    assert!(!nowhere.status.success());
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("cannot connect"));
}

/// Many Rust users keep RUST_BACKTRACE=1 set: a mistake of theirs (a weak key, a node that
/// is not there) still gets one clear line, not a stack backtrace of the binary.
#[test]
fn user_errors_print_the_message_alone_even_with_rust_backtrace_set() {
    let weak_key = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--gossip", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
        .env_remove("MURMUR_CONFIG")
        .env("MURMUR_CLUSTER_KEY", "change-me-to-a-long-random-secret")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let port = free_port().port();
    let unreachable = Command::new(BIN)
        .args([
            "pub",
            "a",
            "1",
            "--url",
            &format!("ws://127.0.0.1:{port}/ws"),
        ])
        .env_remove("MURMUR_URL")
        .env("RUST_BACKTRACE", "full")
        .output()
        .unwrap();
    for (out, says) in [(weak_key, "too weak"), (unreachable, "cannot connect")] {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("Error: ") && stderr.contains(says),
            "{stderr}"
        );
        assert!(
            !stderr.contains("backtrace") && !stderr.contains("Caused by"),
            "{stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn serve_help_explains_every_setting_and_its_environment_variable() {
    let help = murmur(&["serve", "--help"]);
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for (flag, env) in [
        ("--config", "MURMUR_CONFIG"),
        ("--name", "MURMUR_NAME"),
        ("--listen", "MURMUR_LISTEN"),
        ("--max-frame-bytes", "MURMUR_MAX_FRAME_BYTES"),
        ("--max-subscriptions", "MURMUR_MAX_SUBSCRIPTIONS"),
        ("--outbound-queue", "MURMUR_OUTBOUND_QUEUE"),
        ("--max-topic-bytes", "MURMUR_MAX_TOPIC_BYTES"),
        ("--ping-interval", "MURMUR_PING_INTERVAL"),
        ("--idle-timeout", "MURMUR_IDLE_TIMEOUT"),
        ("--write-timeout", "MURMUR_WRITE_TIMEOUT"),
        ("--ack-timeout", "MURMUR_ACK_TIMEOUT"),
        ("--shutdown-grace", "MURMUR_SHUTDOWN_GRACE"),
        ("--log", "MURMUR_LOG"),
        ("--client-tls-cert", "MURMUR_CLIENT_TLS_CERT"),
        ("--client-tls-key", "MURMUR_CLIENT_TLS_KEY"),
        ("--allowed-origins", "MURMUR_ALLOWED_ORIGINS"),
        ("--admin-listen", "MURMUR_ADMIN_LISTEN"),
        ("--max-connections", "MURMUR_MAX_CONNECTIONS"),
        ("--max-connections-per-ip", "MURMUR_MAX_CONNECTIONS_PER_IP"),
        ("--handshake-timeout", "MURMUR_HANDSHAKE_TIMEOUT"),
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
        assert!(text.contains(env), "--help lacks {env}");
    }
}

#[test]
fn settings_come_from_file_environment_and_flags() {
    let dir = std::env::temp_dir().join(format!("murmur-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(&config, "name = \"from-file\"\nmax_subscriptions = 3\n").unwrap();

    // The example config in deploy/ is a valid file.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/murmur.toml");
    let server = Server::start(&["--config", example]);
    drop(server);

    let server = Server::start_with_env(
        &["--config", config.to_str().unwrap()],
        &[("MURMUR_MAX_SUBSCRIPTIONS", "5")],
    );
    let welcome = first_frame(&server.url());
    assert_eq!(welcome["node"], "from-file");
    assert_eq!(
        welcome["limits"]["max_subscriptions"], 5,
        "environment wins over the file"
    );
    drop(server);

    std::fs::write(&config, "listen = \"127.0.0.1:1\"\nno_such_setting = 1\n").unwrap();
    let refused = murmur(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no_such_setting"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Reads the first frame a node sends to a new WebSocket client, via `murmur sub`'s library.
fn first_frame(url: &str) -> serde_json::Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        murmur::client::Client::connect(url)
            .await
            .expect("connects")
            .welcome()
            .clone()
    })
}

#[test]
fn cert_commands_make_a_pki_a_node_can_run_on() {
    let dir = std::env::temp_dir().join(format!("murmur-cert-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.to_str().unwrap();
    let ca = murmur(&["cert", "ca", "--out", out]);
    assert!(ca.status.success(), "{ca:?}");
    let ca_pem = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let node = murmur(&[
        "cert",
        "node",
        "cli-test",
        "--ca",
        ca_pem.to_str().unwrap(),
        "--ca-key",
        ca_key.to_str().unwrap(),
        "--out",
        out,
    ]);
    assert!(node.status.success(), "{node:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("cli-test.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "private keys are not readable by others");

    let server = Server::start(&[
        "--cluster-key",
        "tB445vswuOfoP7VyQ62-1Doe-VFKUiOi1_-RZvR0rPg",
        "--tls-ca",
        ca_pem.to_str().unwrap(),
        "--tls-cert",
        dir.join("cli-test.pem").to_str().unwrap(),
        "--tls-key",
        dir.join("cli-test.key").to_str().unwrap(),
    ]);
    let members = murmur(&["members", "--url", &format!("http://{}", server.admin)]);
    assert!(members.status.success(), "{members:?}");
    let table = String::from_utf8(members.stdout).unwrap();
    assert!(
        table.contains("cli-test *") && table.contains("alive"),
        "{table}"
    );
    // Columns line up under their headings, and the `*` is explained.
    let lines: Vec<&str> = table.lines().collect();
    let state_column = lines[0].find("STATE").expect("a STATE heading");
    assert_eq!(lines[1].find("alive"), Some(state_column), "{table}");
    let generation_end = lines[0].find("GENERATION").unwrap() + "GENERATION".len();
    let generation = lines[1].split_whitespace().nth(3).unwrap();
    assert_eq!(
        lines[1].find(generation).map(|i| i + generation.len()),
        Some(generation_end),
        "{table}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("* the node that answered"),
        "{table}"
    );
    drop(server);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sub_fails_over_to_the_next_url_resumes_and_reports_the_gap() {
    let first = Server::start(&[]);
    let second = Server::start(&[]);
    let urls = format!("{},{}", first.url(), second.url());
    let mut sub = Command::new(BIN)
        .args(["sub", "feed", "--url", &urls, "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sub_stderr = BufReader::new(sub.stderr.take().unwrap());
    let mut line = String::new();
    sub_stderr.read_line(&mut line).unwrap();
    assert!(line.contains(&first.url()), "{line}");

    let one = murmur(&["pub", "feed", "1", "--url", &first.url()]);
    assert!(one.status.success(), "{one:?}");
    // The first node goes away; `sub` moves to the second and resumes there. That node never
    // sequenced the first node's events, so the resume reports what cannot be replayed.
    let status = first.terminate();
    assert!(status.success());
    let mut stderr_lines = Vec::new();
    loop {
        line.clear();
        assert!(
            sub_stderr.read_line(&mut line).unwrap() > 0,
            "sub ended early: {stderr_lines:?}"
        );
        stderr_lines.push(line.clone());
        if line.contains(&second.url()) && line.contains("resumed") {
            break;
        }
    }
    let two = murmur(&["pub", "feed", "2", "--url", &second.url()]);
    assert!(two.status.success(), "{two:?}");
    let mut rest = String::new();
    sub_stderr.read_to_string(&mut rest).unwrap();
    let out = wait_with_timeout(sub, Duration::from_secs(20));
    assert!(out.status.success(), "{out:?}");
    let data: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["data"].clone())
        .collect();
    assert_eq!(data, vec![serde_json::json!(1), serde_json::json!(2)]);
    let all_stderr = format!("{}{rest}", stderr_lines.concat());
    assert!(
        all_stderr.contains("gap:") && all_stderr.contains("epoch_changed"),
        "the lost continuity is reported: {all_stderr}"
    );
}

#[test]
fn config_check_prints_the_effective_settings_with_secrets_masked() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/murmur.toml");
    let out = Command::new(BIN)
        .args(["config", "check", example])
        .env(
            "MURMUR_CLUSTER_KEY",
            "pCDuiudpUNcg9LKFyNPZ2KKWmNEbbfzbugOWnLo_j7g",
        )
        .env("MURMUR_REPLICATION", "3")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("listen = \"127.0.0.1:7400\""), "{printed}");
    assert!(
        printed.contains("replication = 3"),
        "environment applies: {printed}"
    );
    assert!(printed.contains("cluster_key = \"****\""), "{printed}");
    assert!(
        !printed.contains("pCDuiudpUNcg9LKFyNPZ2KKWmNEbbfzbugOWnLo_j7g"),
        "the secret is never printed"
    );

    let dir = std::env::temp_dir().join(format!("murmur-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "idle_timeout = \"1s\"\nping_interval = \"5s\"\n").unwrap();
    let out = murmur(&["config", "check", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("idle_timeout"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn json_logs_are_one_object_per_line() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Command::new(BIN)
        .args([
            "serve",
            "--name",
            "json-logs",
            "--listen",
            &addr.to_string(),
        ])
        .args([
            "--gossip",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env_remove("MURMUR_CONFIG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_healthy(addr);
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(15));
    let logs = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{logs}");
    for line in lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            value["level"].is_string() && value["fields"].is_object(),
            "{line}"
        );
    }
}

#[test]
fn keygen_prints_a_fresh_key_the_node_accepts() {
    let first = murmur(&["keygen"]);
    let second = murmur(&["keygen"]);
    assert!(first.status.success(), "{first:?}");
    let key = String::from_utf8(first.stdout).unwrap();
    let key = key.trim_end();
    assert_eq!(
        key.len(),
        43,
        "32 bytes in base64url without padding: {key}"
    );
    assert_ne!(key, String::from_utf8(second.stdout).unwrap().trim_end());
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/murmur.toml");
    let check = Command::new(BIN)
        .args(["config", "check", example])
        .env("MURMUR_CLUSTER_KEY", key)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
}

#[test]
fn weak_cluster_keys_are_refused_at_start_naming_the_rule() {
    for (key, rule) in [
        ("aaaaaaaaaaaaaaaa", "at least 32"),
        ("local-cluster-key-change-me", "at least 32"),
        ("change-me-to-a-long-random-secret", "placeholder"),
        ("abcdefghabcdefghabcdefghabcdefghabcdefgh", "repeated"),
        ("abababababababababababababababababab", "distinct"),
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--gossip", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
            .env_remove("MURMUR_CONFIG")
            .env("MURMUR_CLUSTER_KEY", key)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{key} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("cluster_key") && stderr.contains(rule),
            "{key}: {stderr}"
        );
        assert!(stderr.contains("murmur keygen"), "{stderr}");
        // Only a placeholder published in Murmur's own examples is ever named.
        if rule != "placeholder" {
            assert!(
                !stderr.contains(key),
                "the key itself is not printed: {stderr}"
            );
        }
    }
}

/// Starts `murmur serve` with `args` and `env`, waits until it is healthy, stops it and
/// returns what it wrote on stderr.
fn serve_stderr(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut server = Server::start_with_env(&[&["--name", "key-source"], args].concat(), env);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut stderr = String::new();
    server
        .child
        .stderr
        .take()
        .expect("stderr is piped")
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

#[test]
fn the_cluster_key_comes_from_a_file_or_the_environment_and_a_flag_is_warned_about() {
    const KEY: &str = "kKDqibjKP6q35CdizaZgt5fZaJ7arAGkreGgPTWpROg";
    let on_command_line = serve_stderr(&["--cluster-key", KEY], &[]);
    assert!(
        on_command_line.contains("--cluster-key") && on_command_line.contains("`ps`"),
        "a key given as a flag is warned about: {on_command_line}"
    );
    let from_env = serve_stderr(&[], &[("MURMUR_CLUSTER_KEY", KEY)]);
    assert!(!from_env.contains("`ps`"), "{from_env}");

    let dir = std::env::temp_dir().join(format!("murmur-key-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cluster.key");
    std::fs::write(&file, format!("{KEY}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let from_file = serve_stderr(&["--cluster-key-file", file.to_str().unwrap()], &[]);
    assert!(
        !from_file.contains("`ps`") && !from_file.contains("readable by other users"),
        "{from_file}"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let shared_file = serve_stderr(&[], &[("MURMUR_CLUSTER_KEY_FILE", file.to_str().unwrap())]);
    assert!(
        shared_file.contains("readable by other users"),
        "{shared_file}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The development loop of the security docs: a node with `auth = token`, a token from
/// `murmur token`, and `murmur sub`/`pub --token`. Without a token, or outside its
/// permissions, the CLI fails and says why.
#[test]
fn sub_and_pub_with_a_token_against_a_node_that_requires_one() {
    let secret = "cli-auth-secret-0123456789abcdefghijklmnop";
    let server = Server::start_with_env(
        &["--name", "cli-auth", "--auth", "token"],
        &[("MURMUR_TOKEN_HMAC_SECRET", secret)],
    );
    let url = server.url();
    let minted = Command::new(BIN)
        .args([
            "token",
            "--sub",
            "alice",
            "--allow-pub",
            "chat.>",
            "--allow-sub",
            "chat.>",
        ])
        .env("MURMUR_TOKEN_HMAC_SECRET", secret)
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();

    let sub = spawn_subscriber(
        BIN,
        &["chat.*", "--url", &url, "--count", "1", "--token", &token],
        "chat.*",
    );
    let published = murmur(&["pub", "chat.lobby", "hi", "--url", &url, "--token", &token]);
    assert!(published.status.success(), "{published:?}");
    let out = wait_with_timeout(sub, Duration::from_secs(20));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"topic\":\"chat.lobby\""));

    let without = murmur(&["pub", "chat.lobby", "hi", "--url", &url]);
    assert!(!without.status.success());
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("unauthorized"),
        "{without:?}"
    );
    let outside = murmur(&["pub", "orders.x", "hi", "--url", &url, "--token", &token]);
    assert!(!outside.status.success());
    assert!(
        String::from_utf8_lossy(&outside.stderr).contains("forbidden"),
        "{outside:?}"
    );
}
