//! Hosts in network namespaces on this machine: one per node and one for the clients, joined
//! by a bridge that lives in its own namespace, so the machine's own networking and firewall
//! are never touched. Every fault the harness injects is an iptables rule in a chain the lab
//! owns in a host's namespace; healing flushes the chain.
//!
//! Needs root, iproute2 and iptables. Everything made is removed on drop — processes still
//! running in the lab's namespaces are killed first — and stale leftovers of a crashed run
//! (namespaces named `mc-*` and their processes) are removed when a lab is built.

use std::process::{Command, Output};

use thiserror::Error;

const PREFIX: &str = "mc";
const SUBNET: &str = "10.77.0";

#[derive(Debug, Error)]
pub enum LabError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
}

fn run(args: &[&str]) -> Result<Output, LabError> {
    let command = args.join(" ");
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(LabError::Command {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}

/// One host: a network namespace with an address on the lab's bridge.
#[derive(Debug, Clone)]
pub struct Host {
    pub namespace: String,
    pub ip: String,
}

impl Host {
    /// A command that runs inside this host's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace, program]);
        command
    }

    fn exec(&self, args: &[&str]) -> Result<Output, LabError> {
        let mut full = vec!["ip", "netns", "exec", &self.namespace];
        full.extend_from_slice(args);
        run(&full)
    }
}

#[derive(Debug)]
pub struct Lab {
    pub nodes: Vec<Host>,
    pub client: Host,
    switch: String,
}

impl Lab {
    /// Builds `nodes` node hosts (10.77.0.1..) and a client host (10.77.0.100). A run that
    /// adds a fresh node asks for one more host than it starts nodes on.
    pub fn build(nodes: usize) -> Result<Self, LabError> {
        Self::remove_leftovers();
        let switch = format!("{PREFIX}-sw");
        run(&["ip", "netns", "add", &switch])?;
        let lab = Self {
            nodes: (1..=nodes)
                .map(|i| Host {
                    namespace: format!("{PREFIX}-n{i}"),
                    ip: format!("{SUBNET}.{i}"),
                })
                .collect(),
            client: Host {
                namespace: format!("{PREFIX}-c"),
                ip: format!("{SUBNET}.100"),
            },
            switch,
        };
        run(&[
            "ip",
            "netns",
            "exec",
            &lab.switch,
            "ip",
            "link",
            "add",
            "br0",
            "type",
            "bridge",
        ])?;
        run(&[
            "ip",
            "netns",
            "exec",
            &lab.switch,
            "ip",
            "link",
            "set",
            "br0",
            "up",
        ])?;
        for (i, host) in lab.hosts().enumerate() {
            let port = format!("h{i}");
            run(&["ip", "netns", "add", &host.namespace])?;
            run(&[
                "ip",
                "netns",
                "exec",
                &lab.switch,
                "ip",
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &host.namespace,
            ])?;
            run(&[
                "ip",
                "netns",
                "exec",
                &lab.switch,
                "ip",
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ])?;
            host.exec(&["ip", "link", "set", "lo", "up"])?;
            host.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", host.ip),
                "dev",
                "eth0",
            ])?;
            host.exec(&["ip", "link", "set", "eth0", "up"])?;
            host.exec(&["iptables", "-N", "CHAOS"])?;
            host.exec(&["iptables", "-I", "INPUT", "-j", "CHAOS"])?;
            host.exec(&["iptables", "-I", "OUTPUT", "-j", "CHAOS"])?;
        }
        Ok(lab)
    }

    fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.nodes.iter().chain(std::iter::once(&self.client))
    }

    /// Cuts `host` off from every other node host (clients still reach it).
    pub fn isolate(&self, host: usize) -> Result<(), LabError> {
        for (i, other) in self.nodes.iter().enumerate() {
            if i == host {
                continue;
            }
            self.drop_between(&self.nodes[host], other)?;
        }
        Ok(())
    }

    /// Drops every packet between two hosts, both ways, on both sides.
    pub fn drop_between(&self, a: &Host, b: &Host) -> Result<(), LabError> {
        for (here, there) in [(a, b), (b, a)] {
            here.exec(&["iptables", "-A", "CHAOS", "-s", &there.ip, "-j", "DROP"])?;
            here.exec(&["iptables", "-A", "CHAOS", "-d", &there.ip, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Drops what `from` sends to `to`; what `to` sends to `from` still arrives. The rule sits
    /// in `from`'s namespace and matches only packets leaving it.
    pub fn drop_outbound(&self, from: &Host, to: &Host) -> Result<(), LabError> {
        from.exec(&[
            "iptables", "-A", "CHAOS", "-s", &from.ip, "-d", &to.ip, "-j", "DROP",
        ])?;
        Ok(())
    }

    /// Drops each UDP packet arriving at `host` on `port` from another lab host with
    /// `probability` (netem is not built into every kernel; the statistic match is).
    pub fn lose_inbound(&self, host: &Host, port: u16, probability: f64) -> Result<(), LabError> {
        host.exec(&[
            "iptables",
            "-A",
            "CHAOS",
            "-d",
            &host.ip,
            "-s",
            &format!("{SUBNET}.0/24"),
            "-p",
            "udp",
            "--dport",
            &port.to_string(),
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &format!("{probability}"),
            "-j",
            "DROP",
        ])?;
        Ok(())
    }

    /// Hands the UDP packets `from` sends to `to` to the userspace queue `queue` (a delayer
    /// holds them there). `--queue-bypass`: while nothing listens, packets pass untouched.
    pub fn queue_outbound(&self, from: &Host, to: &Host, queue: u16) -> Result<(), LabError> {
        from.exec(&[
            "iptables",
            "-A",
            "CHAOS",
            "-s",
            &from.ip,
            "-d",
            &to.ip,
            "-p",
            "udp",
            "-j",
            "NFQUEUE",
            "--queue-num",
            &queue.to_string(),
            "--queue-bypass",
        ])?;
        Ok(())
    }

    /// Removes every fault rule.
    pub fn heal(&self) -> Result<(), LabError> {
        for host in self.hosts() {
            host.exec(&["iptables", "-F", "CHAOS"])?;
        }
        Ok(())
    }

    /// Packets dropped by fault rules on `host` since the last heal: a fault that drops
    /// nothing did not take effect.
    pub fn dropped_on(&self, host: &Host) -> Result<u64, LabError> {
        self.matched_on(host, "DROP")
    }

    /// Packets that fault rules with `target` (`DROP`, `NFQUEUE`) matched on `host` since the
    /// last heal.
    pub fn matched_on(&self, host: &Host, target: &str) -> Result<u64, LabError> {
        let out = host.exec(&["iptables", "-L", "CHAOS", "-v", "-n", "-x"])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.split_whitespace().nth(2) == Some(target))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    }

    /// Kills every process still running in namespace `name` (nodes, clients, a delayer) so
    /// that none outlives the lab in a deleted namespace.
    fn kill_processes_in(name: &str) {
        let Ok(out) = run(&["ip", "netns", "pids", name]) else {
            return;
        };
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = run(&["kill", "-KILL", pid]);
        }
    }

    fn remove_leftovers() {
        let Ok(out) = run(&["ip", "netns", "list"]) else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(&format!("{PREFIX}-")) {
                Self::kill_processes_in(name);
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let names: Vec<String> = self
            .hosts()
            .map(|h| h.namespace.clone())
            .chain(std::iter::once(self.switch.clone()))
            .collect();
        for name in &names {
            Self::kill_processes_in(name);
        }
        for name in names {
            let _ = run(&["ip", "netns", "del", &name]);
        }
    }
}
