//! The files in `deploy/` parse and refer only to what exists: the binary's subcommands,
//! flags and environment variables, its ports and HTTP paths, and its metric names.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use murmur_tests::{murmur_binary, start_node};
use serde_yaml_ng::Value;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The environment variables and flags `murmur serve --help` documents.
fn serve_help() -> (HashSet<String>, HashSet<String>) {
    let out = Command::new(murmur_binary())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    // `[env: NAME=]`, which help wrapping may break after `[env:`.
    let envs = help
        .split("[env:")
        .skip(1)
        .filter_map(|s| s.trim_start().split(['=', ']']).next())
        .map(str::to_owned)
        .collect();
    let flags = help
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches([',', '.']).to_owned())
        .collect();
    (envs, flags)
}

fn subcommands() -> String {
    let out = Command::new(murmur_binary())
        .arg("--help")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn yaml_documents(path: &str) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}"));
            value.apply_merge().unwrap();
            value
        })
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// The (container) port of `host:port`, or of a compose mapping `ip:host:container/proto`.
fn port_of(addr: &str) -> u16 {
    addr.split('/')
        .next()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

#[test]
fn compose_uses_only_real_settings_and_ports() {
    let (envs, _) = serve_help();
    let compose = &yaml_documents("docker-compose.yml")[0];
    let services = compose["services"].as_mapping().expect("services");
    assert_eq!(services.len(), 3, "three nodes");
    for (name, service) in services {
        let env = service["environment"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{name:?}: environment"));
        for key in env.keys() {
            let key = key.as_str().unwrap();
            assert!(
                envs.contains(key),
                "{name:?} sets {key}, which murmur does not read"
            );
        }
        let listen = env
            .get("MURMUR_LISTEN")
            .and_then(Value::as_str)
            .expect("MURMUR_LISTEN");
        let ports: Vec<String> = service["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect();
        assert!(
            ports.iter().any(|p| port_of(p) == port_of(listen)),
            "{name:?} publishes {ports:?} but listens on {listen}"
        );
        let seeds = env
            .get("MURMUR_SEEDS")
            .and_then(Value::as_str)
            .expect("seeds");
        let gossip = port_of(env.get("MURMUR_GOSSIP").and_then(Value::as_str).unwrap());
        assert!(
            seeds.split(',').all(|s| port_of(s) == gossip),
            "seeds {seeds} use the gossip port"
        );
        let check = service["healthcheck"]["test"]
            .as_sequence()
            .expect("healthcheck");
        assert!(
            subcommands().contains(check[2].as_str().unwrap()),
            "healthcheck runs a real subcommand"
        );
    }
}

#[test]
fn kubernetes_manifests_parse_and_fit_together() {
    let (envs, _) = serve_help();
    let secret = &yaml_documents("kubernetes/secret.yaml.example")[0];
    let headless = &yaml_documents("kubernetes/headless-service.yaml")[0];
    let service = &yaml_documents("kubernetes/service.yaml")[0];
    let statefulset = &yaml_documents("kubernetes/statefulset.yaml")[0];
    let pdb = &yaml_documents("kubernetes/pdb.yaml")[0];
    for doc in yaml_documents("kubernetes/namespace.yaml") {
        assert_eq!(doc["kind"], "Namespace");
    }
    assert_eq!(statefulset["kind"], "StatefulSet");
    assert_eq!(pdb["kind"], "PodDisruptionBudget");
    assert_eq!(
        headless["spec"]["clusterIP"], "None",
        "a headless service for DNS seeds"
    );

    let pod = &statefulset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = container["args"].as_sequence().unwrap();
    assert!(subcommands().contains(args[0].as_str().unwrap()));
    let ports: Vec<(&str, u64)> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    let env = container["env"].as_sequence().unwrap();
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("{name} is not set"))
            .to_owned()
    };
    for e in env {
        let name = e["name"].as_str().unwrap();
        assert!(
            !name.starts_with("MURMUR_") || envs.contains(name),
            "{name} is not a murmur setting"
        );
        if let Some(secret_ref) = e["valueFrom"]["secretKeyRef"].as_mapping() {
            assert_eq!(
                secret_ref.get("name"),
                secret["metadata"].get("name"),
                "{name}: secret name"
            );
            let key = secret_ref.get("key").and_then(Value::as_str).unwrap();
            assert!(
                secret["stringData"].get(key).is_some(),
                "{name}: secret has no {key}"
            );
        }
    }
    for (setting, port_name) in [
        ("MURMUR_LISTEN", "http"),
        ("MURMUR_GOSSIP", "gossip"),
        ("MURMUR_QUIC", "quic"),
    ] {
        let port = u64::from(port_of(&value(setting)));
        assert!(
            ports.contains(&(port_name, port)),
            "{setting} on {port}, ports {ports:?}"
        );
    }
    for p in headless["spec"]["ports"].as_sequence().unwrap() {
        let port = p["port"].as_u64().unwrap();
        assert!(
            ports.iter().any(|(_, c)| *c == port),
            "headless port {port} is a container port"
        );
    }
    assert!(value("MURMUR_SEEDS").contains(headless["metadata"]["name"].as_str().unwrap()));
    let client_port = service["spec"]["ports"][0]["targetPort"].clone();
    assert!(client_port == "http" || client_port.as_u64() == Some(7400));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path);
        assert_eq!(container[probe]["httpGet"]["port"], "http");
    }
    let grace: u64 = humantime::parse_duration(&value("MURMUR_SHUTDOWN_GRACE"))
        .unwrap()
        .as_secs();
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        termination >= grace + 10,
        "terminationGracePeriodSeconds {termination} leaves room to drain ({grace}s)"
    );
    assert_eq!(
        statefulset["spec"]["selector"]["matchLabels"], pdb["spec"]["selector"]["matchLabels"],
        "the budget covers the pods"
    );
}

/// deploy/murmur.toml is the example "with every key": each setting `murmur serve` takes from
/// the environment appears in it, set or commented out, and the file itself is valid.
#[test]
fn the_example_configuration_has_every_key() {
    let (envs, _) = serve_help();
    let example = read("murmur.toml");
    let mentioned: HashSet<String> = example
        .lines()
        .map(|l| l.trim_start_matches('#').trim_start())
        .filter_map(|l| {
            let key = l.split(['=', ' ']).next()?;
            let key = key.trim_start_matches('[').trim_end_matches(']');
            Some(key.to_owned())
        })
        .collect();
    let missing: Vec<String> = envs
        .iter()
        .filter(|e| *e != "MURMUR_CONFIG")
        .filter_map(|e| e.strip_prefix("MURMUR_"))
        .map(str::to_lowercase)
        .filter(|key| !mentioned.contains(key))
        .collect();
    assert!(missing.is_empty(), "murmur.toml lacks {missing:?}");
    assert!(mentioned.contains("history_overrides"));
    let out = Command::new(murmur_binary())
        .args(["config", "check"])
        .arg(deploy("murmur.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// `kubectl apply -f deploy/kubernetes/` takes every .yaml, .yml and .json file there: none
/// of them may hold a Secret, or applying the directory would overwrite the cluster key the
/// README has you create with the example's placeholder.
#[test]
fn applying_the_kubernetes_directory_leaves_the_secret_alone() {
    let dir = deploy("kubernetes");
    let mut applied = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !(name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json")) {
            continue;
        }
        applied += 1;
        for doc in yaml_documents(&format!("kubernetes/{name}")) {
            assert_ne!(
                doc["kind"], "Secret",
                "kubectl apply would apply the Secret in {name}"
            );
        }
    }
    assert!(applied >= 5, "{applied} manifests");
}

/// The StatefulSet runs the nodes with the settings `make compose-test` exercises on the
/// compose file: the same listen addresses, drain time, logs and lock-down, and a stop budget
/// as long. Only what a platform decides differs (names, advertised IP, seeds, admin port).
#[test]
fn kubernetes_runs_the_nodes_as_the_compose_test_does() {
    let compose = &yaml_documents("docker-compose.yml")[0];
    let node = &compose["services"]["n1"];
    let compose_env = node["environment"].as_mapping().unwrap();
    let statefulset = &yaml_documents("kubernetes/statefulset.yaml")[0];
    let pod = &statefulset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let k8s_env = container["env"].as_sequence().unwrap();
    let platform_specific = [
        "MURMUR_NAME",
        "MURMUR_ADVERTISE_IP",
        "MURMUR_SEEDS",
        "MURMUR_CLUSTER_KEY",
    ];
    for (key, value) in compose_env {
        let key = key.as_str().unwrap();
        if platform_specific.contains(&key) {
            assert!(
                k8s_env.iter().any(|e| e["name"] == key),
                "the StatefulSet does not set {key}"
            );
            continue;
        }
        let k8s_value = k8s_env
            .iter()
            .find(|e| e["name"] == key)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("compose sets {key}, the StatefulSet does not"));
        assert_eq!(
            Some(k8s_value),
            value.as_str(),
            "{key} differs between compose and the StatefulSet"
        );
    }
    let security = &container["securityContext"];
    assert_eq!(node["read_only"].as_bool(), Some(true));
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(node["cap_drop"][0], "ALL");
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert_eq!(node["security_opt"][0], "no-new-privileges:true");
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    // Compose gives SIGTERM this long before SIGKILL; Kubernetes counts the preStop pause too.
    let compose_stop = humantime::parse_duration(node["stop_grace_period"].as_str().unwrap())
        .unwrap()
        .as_secs();
    let pre_stop: u64 = container["lifecycle"]["preStop"]["exec"]["command"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        termination >= compose_stop + pre_stop,
        "terminationGracePeriodSeconds {termination} < stop_grace_period {compose_stop} + preStop {pre_stop}"
    );
    // The one client port compose publishes is the one the client Service exposes.
    let service = &yaml_documents("kubernetes/service.yaml")[0];
    let published = port_of(node["ports"][0].as_str().unwrap());
    assert_eq!(
        service["spec"]["ports"][0]["port"].as_u64(),
        Some(u64::from(published))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_dashboard_refer_to_paths_and_metrics_that_exist() {
    let node = start_node(|_| {}).await;
    let client = format!("http://{}", node.local_addr());
    let admin = murmur_tests::admin_url(&node);
    for (base, path) in [
        (&client, "/healthz"),
        (&client, "/readyz"),
        (&admin, "/metrics"),
        (&admin, "/v1/cluster"),
    ] {
        murmur::client::http_get(base, path)
            .await
            .unwrap_or_else(|e| panic!("{base}{path}: {e}"));
    }
    let metrics = murmur::client::http_get(&admin, "/metrics").await.unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/murmur-dashboard.json")).unwrap();
    let text = dashboard.to_string();
    let mut used: HashSet<String> = HashSet::new();
    for part in text.split("murmur_").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        used.insert(format!("murmur_{name}"));
    }
    assert!(used.len() > 10, "the dashboard uses the metrics: {used:?}");
    for name in used {
        let base_name = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        // A family without samples yet (no peers here) still has its TYPE line.
        let family = base_name.strip_suffix("_total").unwrap_or(base_name);
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(base_name) || l.starts_with(&format!("# TYPE {family} "))),
            "the dashboard uses {name}, which /metrics does not have"
        );
    }
}

#[test]
fn systemd_unit_and_dockerfile_run_the_real_binary() {
    let (envs, flags) = serve_help();
    let unit = read("systemd/murmur.service");
    let exec = unit
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    let mut words = exec
        .trim_start_matches("ExecStart=")
        .split_whitespace()
        .skip(1);
    assert!(subcommands().contains(words.next().unwrap()));
    for flag in words.filter(|w| w.starts_with("--")) {
        assert!(
            flags.contains(flag),
            "ExecStart uses {flag}, which serve does not take"
        );
    }
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.parse().ok())
        .expect("TimeoutStopSec");
    assert!(stop >= 20, "TimeoutStopSec leaves room to drain");
    for line in read("systemd/murmur.env.example")
        .lines()
        .filter(|l| l.starts_with("MURMUR_"))
    {
        let key = line.split('=').next().unwrap();
        assert!(envs.contains(key), "murmur.env.example sets {key}");
    }

    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("cargo build --release -p murmur --locked"));
    assert!(dockerfile.contains("EXPOSE 7400/tcp 7401/udp 7402/udp"));
    for word in dockerfile
        .split_whitespace()
        .filter(|w| w.starts_with("MURMUR_"))
    {
        let key = word
            .split('=')
            .next()
            .unwrap()
            .trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_');
        assert!(envs.contains(key), "the Dockerfile sets {key}");
    }
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../.dockerignore")
            .exists()
    );
}

/// The example keys shipped in deploy/ are placeholders a node refuses to start with, and
/// the compose file has no default key at all: nobody runs a cluster on a published key.
#[test]
fn placeholder_cluster_keys_in_deploy_are_refused() {
    let secret = &yaml_documents("kubernetes/secret.yaml.example")[0];
    let mut placeholders = vec![
        secret["stringData"]["cluster-key"]
            .as_str()
            .expect("the secret's placeholder")
            .to_owned(),
    ];
    placeholders.extend(
        read("systemd/murmur.env.example")
            .lines()
            .filter_map(|l| l.strip_prefix("MURMUR_CLUSTER_KEY="))
            .map(str::to_owned),
    );
    assert_eq!(placeholders.len(), 2, "{placeholders:?}");
    for key in &placeholders {
        let out = Command::new(murmur_binary())
            .args(["config", "check"])
            .arg(deploy("murmur.toml"))
            .env("MURMUR_CLUSTER_KEY", key)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key} is accepted");
        assert!(stderr.contains("too weak"), "{key}: {stderr}");
    }
    let compose = &yaml_documents("docker-compose.yml")[0];
    let key = compose["services"]["n1"]["environment"]["MURMUR_CLUSTER_KEY"]
        .as_str()
        .expect("compose passes the key through");
    assert!(
        key.starts_with("${MURMUR_CLUSTER_KEY:?"),
        "compose refuses to start without a key rather than use a default: {key}"
    );
    let script = read("local-cluster.sh");
    assert!(
        script.contains("keygen") && !script.contains("change-me"),
        "local-cluster.sh generates its key"
    );
}
