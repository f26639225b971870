//! The `murmur` binary with TLS on its client port: `murmur pub`/`sub` over `wss://` with
//! `--ca`, and the certificate replaced on SIGHUP while connections stay open.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};

mod common;
use common::{spawn_subscriber, wait_with_timeout};

const BIN: &str = env!("CARGO_BIN_EXE_murmur");

/// A CA and the files of node certificates it issues, in a directory of their own.
struct Pki {
    dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("murmur-cli-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Self {
            issuer: rcgen::Issuer::new(params, key),
            dir,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate for 127.0.0.1 and localhost, written as `cert`/`key`; its DER.
    fn issue(&self, cert_path: &Path, key_path: &Path) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(cert_path, cert.pem()).unwrap();
        std::fs::write(key_path, key.serialize_pem()).unwrap();
        cert.der().clone()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `murmur serve` with TLS on its client port; its log lines arrive on `log`.
struct TlsServer {
    child: Child,
    addr: SocketAddr,
    log: Receiver<String>,
}

impl TlsServer {
    fn start(cert: &Path, key: &Path, ca: &Path) -> Self {
        let free = || {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
        };
        let (addr, admin) = (free(), free());
        let mut child = Command::new(BIN)
            .args(["serve", "--name", "tls-test", "--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--gossip", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
            .args(["--client-tls-cert", cert.to_str().unwrap()])
            .args(["--client-tls-key", key.to_str().unwrap()])
            .env_remove("MURMUR_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("murmur serve starts");
        let log = forward_lines(child.stderr.take().unwrap());
        let server = Self { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while https_healthz(addr, ca).is_none() {
            assert!(Instant::now() < deadline, "no https://{addr}/healthz");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn url(&self) -> String {
        format!("wss://{}/ws", self.addr)
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits for a log line containing `text`.
    fn wait_for_log(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {text:?}"),
            }
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward_lines(stderr: ChildStderr) -> Receiver<String> {
    let (send, receive) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if send.send(line).is_err() {
                return;
            }
        }
    });
    receive
}

fn tls_client(ca: &Path) -> Arc<rustls::ClientConfig> {
    murmur::client::tls_config(Some(ca)).expect("the test CA loads")
}

/// Connects with TLS, trusting `ca`; the certificate the node presented and the stream.
fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
) -> Option<(
    CertificateDer<'static>,
    rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
)> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let name = ServerName::IpAddress(addr.ip().into());
    let connection = rustls::ClientConnection::new(tls_client(ca), name).ok()?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).ok()?;
    }
    let presented = stream
        .conn
        .peer_certificates()?
        .first()?
        .clone()
        .into_owned();
    Some((presented, stream))
}

/// `GET /healthz` over TLS: the status code.
fn https_healthz(addr: SocketAddr, ca: &Path) -> Option<u16> {
    let (_, mut stream) = tls_connect(addr, ca)?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    // The node may close without a TLS close_notify once it has answered.
    let _ = stream.read_to_string(&mut response);
    response.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn pub_and_sub_over_wss_trusting_a_private_ca() {
    let pki = Pki::new("wss");
    let (cert, key) = (pki.dir.join("node.pem"), pki.dir.join("node.key"));
    pki.issue(&cert, &key);
    let server = TlsServer::start(&cert, &key, &pki.ca());
    let url = server.url();
    let ca = pki.ca();
    let ca = ca.to_str().unwrap();

    let sub = spawn_subscriber(
        BIN,
        &["secure.*", "--url", &url, "--ca", ca, "--count", "1"],
        "secure.*",
    );

    let published = Command::new(BIN)
        .args(["pub", "secure.room", r#"{"text":"over tls"}"#])
        .args(["--url", &url, "--ca", ca])
        .env_remove("MURMUR_URL")
        .output()
        .unwrap();
    assert!(published.status.success(), "{published:?}");
    let out = wait_with_timeout(sub, Duration::from_secs(20));
    assert!(out.status.success(), "{out:?}");
    let event: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!(event["data"]["text"], "over tls");

    // Without the CA the node's certificate is not trusted (the system's roots do not know
    // it), and a plain ws:// client cannot speak to a TLS port.
    let untrusted = Command::new(BIN)
        .args(["pub", "secure.room", "x", "--url", &url])
        .env_remove("MURMUR_URL")
        .env_remove("MURMUR_CA")
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
    let said = String::from_utf8_lossy(&untrusted.stderr);
    assert!(
        said.contains("certificate") || said.contains("root certificates"),
        "{said}"
    );
    let plain = Command::new(BIN)
        .args(["pub", "secure.room", "x"])
        .args(["--url", &format!("ws://{}/ws", server.addr)])
        .env_remove("MURMUR_URL")
        .output()
        .unwrap();
    assert!(!plain.status.success(), "{plain:?}");
    drop(server);
}

#[test]
fn sighup_swaps_the_certificate_for_new_connections_and_keeps_open_ones() {
    let pki = Pki::new("reload");
    let (cert, key) = (pki.dir.join("node.pem"), pki.dir.join("node.key"));
    let first = pki.issue(&cert, &key);
    let server = TlsServer::start(&cert, &key, &pki.ca());
    let ca = pki.ca();
    assert_eq!(tls_connect(server.addr, &ca).unwrap().0, first);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tls = tls_client(&ca);
    let mut open = runtime
        .block_on(murmur::client::Client::connect_with(
            &server.url(),
            Some(tls.clone()),
        ))
        .expect("a wss connection");
    assert_eq!(open.welcome()["op"], "welcome");

    // New files (written to the side, then renamed over the old ones, as tools like
    // certbot do), then SIGHUP.
    let (next_cert, next_key) = (pki.dir.join("next.pem"), pki.dir.join("next.key"));
    let second = pki.issue(&next_cert, &next_key);
    assert_ne!(first, second);
    std::fs::rename(&next_key, &key).unwrap();
    std::fs::rename(&next_cert, &cert).unwrap();
    server.signal("-HUP");
    server.wait_for_log("client TLS certificate reloaded");
    assert_eq!(
        tls_connect(server.addr, &ca).unwrap().0,
        second,
        "a new connection gets the new certificate"
    );

    // The connection made before the reload still works.
    runtime.block_on(async {
        open.send(&serde_json::json!({"op": "ping", "ref": "still-here"}))
            .await
            .unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(5), open.next_frame())
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(pong["op"], "pong", "{pong}");
        assert_eq!(pong["ref"], "still-here");
    });

    // A reload that cannot work (a key that does not match) keeps the certificate in use.
    pki.issue(&next_cert, &next_key);
    std::fs::rename(&next_cert, &cert).unwrap();
    server.signal("-HUP");
    let line = server.wait_for_log("NOT reloaded");
    assert!(line.contains("does not fit"), "{line}");
    assert_eq!(tls_connect(server.addr, &ca).unwrap().0, second);
    assert!(
        https_healthz(server.addr, &ca) == Some(200),
        "still serving after a failed reload"
    );
}
