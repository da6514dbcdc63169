//! `dnslens node-setup`: the node plumbing of node-local mode on the link-local address, as
//! NodeLocal DNSCache does it — and undone when the last dnslens of the node goes, so an
//! uninstall never leaves the kube-dns address bound to nobody (a node-wide DNS blackhole).
//!
//! `up` (idempotent): the interface (`nodelocaldns`, created as a dummy interface when it
//! does not exist; an existing interface such as `lo` is used as it is), each address on it
//! as a /32 (/128), and for each address, UDP and TCP, the rules that take DNS to it out of
//! conntrack — raw `PREROUTING -d A --dport 53 NOTRACK`, raw `OUTPUT -d A --dport 53 NOTRACK`
//! (host-network clients), raw `OUTPUT -s A --sport 53 NOTRACK` — and let it through the
//! filter table (`INPUT -d A --dport 53 ACCEPT`, `OUTPUT -s A --sport 53 ACCEPT`). Every
//! rule carries the comment `dnslens` and is added only when `iptables -C` does not find it.
//!
//! `down`: the rules, the addresses, and the interface when it is a dummy left with no
//! address — unless something still answers DNS on one of the addresses (a UDP socket bound
//! to it, or to the wildcard, on the port: `/proc/net/udp`, `/proc/net/udp6`), which is the
//! new pod of a rolling update: then everything stays.
//!
//! `hold`: `up`, then `up` again every `--check-every` (60 s, as node-cache re-asserts its
//! rules: a firewall reload or another agent flushing the tables would otherwise remove them
//! for good), each repair logged and counted in `--status-file` (`repairs N`, `checked
//! UNIX_SECONDS`), which the node-local dnslens exports as `dnslens_node_setup_repairs_total`
//! and `dnslens_node_setup_last_check_timestamp_seconds` (`admin.node_setup_status`); on
//! SIGTERM, `down`. Run as a native sidecar of the node-local pod, it is stopped after
//! dnslens itself, so `down` sees whether another dnslens serves.
//!
//! Tools: `ip` (iproute2) and `iptables` / `ip6tables` (`-w`: waits for the xtables lock that
//! kube-proxy also takes), as node-cache uses them: they follow the node's iptables backend
//! (legacy or nft) where a netlink implementation would have to pick one.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

/// Marks every rule dnslens adds, so `down` removes only its own.
pub const RULE_COMMENT: &str = "dnslens";

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{command}: {message}")]
    Command { command: String, message: String },
}

/// What `up` and `down` act on.
#[derive(Debug, Clone)]
pub struct NodeSetup {
    pub interface: String,
    pub addresses: Vec<IpAddr>,
    pub port: u16,
}

/// What `hold` reports to the node-local dnslens through the status file.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Pieces found missing and put back since `hold` started.
    pub repairs: u64,
    /// The last check.
    pub checked: std::time::SystemTime,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            repairs: 0,
            checked: std::time::SystemTime::now(),
        }
    }
}

impl Status {
    /// `repairs N` and `checked UNIX_SECONDS`, one per line.
    pub fn to_text(&self) -> String {
        let checked = self
            .checked
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("repairs {}\nchecked {checked}\n", self.repairs)
    }

    /// From [`Status::to_text`]'s form; `None` for anything else.
    pub fn parse(text: &str) -> Option<Status> {
        let mut repairs = None;
        let mut checked = None;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("repairs", n)) => repairs = n.trim().parse().ok(),
                Some(("checked", t)) => {
                    checked = t
                        .trim()
                        .parse()
                        .ok()
                        .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
                }
                _ => {}
            }
        }
        Some(Status {
            repairs: repairs?,
            checked: checked?,
        })
    }

    /// Writes the file whole (a temporary file renamed over it: a reader never sees half).
    pub fn write(&self, file: Option<&Path>) {
        let Some(file) = file else { return };
        let tmp = file.with_extension("tmp");
        let written =
            std::fs::write(&tmp, self.to_text()).and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), error = %e, "cannot write the node setup status");
        }
    }
}

/// `dnslens_node_setup_repairs_total` and `dnslens_node_setup_last_check_timestamp_seconds`,
/// read from `hold`'s status file at each scrape (`admin.node_setup_status`); no series while
/// the file is missing or unreadable.
#[derive(Debug)]
pub struct StatusCollector(pub std::path::PathBuf);

impl prometheus_client::collector::Collector for StatusCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Some(status) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|t| Status::parse(&t))
        else {
            return Ok(());
        };
        let repairs = ConstCounter::new(status.repairs);
        repairs.encode(encoder.encode_descriptor(
            "node_setup_repairs",
            "Pieces of the node setup (interface, address, rule) found missing and put back by node-setup hold",
            None,
            repairs.metric_type(),
        )?)?;
        let checked = status
            .checked
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let gauge = ConstGauge::new(checked);
        gauge.encode(encoder.encode_descriptor(
            "node_setup_last_check_timestamp_seconds",
            "When node-setup hold last checked the node setup",
            None,
            gauge.metric_type(),
        )?)
    }
}

/// One rule: table, chain, and the match/target arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub v6: bool,
    pub table: &'static str,
    pub chain: &'static str,
    pub spec: Vec<String>,
}

impl NodeSetup {
    /// Every rule `up` adds.
    pub fn rules(&self) -> Vec<Rule> {
        let port = self.port.to_string();
        let mut rules = Vec::new();
        for addr in &self.addresses {
            let host = match addr {
                IpAddr::V4(a) => format!("{a}/32"),
                IpAddr::V6(a) => format!("{a}/128"),
            };
            for proto in ["udp", "tcp"] {
                for (table, chain, side, target) in [
                    ("raw", "PREROUTING", "-d", "NOTRACK"),
                    ("raw", "OUTPUT", "-d", "NOTRACK"),
                    ("raw", "OUTPUT", "-s", "NOTRACK"),
                    ("filter", "INPUT", "-d", "ACCEPT"),
                    ("filter", "OUTPUT", "-s", "ACCEPT"),
                ] {
                    let port_side = if side == "-d" { "--dport" } else { "--sport" };
                    let spec = [
                        side,
                        &host,
                        "-p",
                        proto,
                        "-m",
                        proto,
                        port_side,
                        &port,
                        "-m",
                        "comment",
                        "--comment",
                        RULE_COMMENT,
                        "-j",
                        target,
                    ];
                    rules.push(Rule {
                        v6: addr.is_ipv6(),
                        table,
                        chain,
                        spec: spec.iter().map(|s| s.to_string()).collect(),
                    });
                }
            }
        }
        rules
    }

    /// Sets everything up; what is already there is left as it is. Returns how many pieces
    /// (the interface, an address, a rule) were missing and added.
    pub fn up(&self) -> Result<usize, SetupError> {
        let mut added = 0;
        if !run_ok("ip", &["link", "show", "dev", &self.interface]) {
            run("ip", &["link", "add", &self.interface, "type", "dummy"])?;
            added += 1;
        }
        run("ip", &["link", "set", "dev", &self.interface, "up"])?;
        let present =
            output("ip", &["-o", "addr", "show", "dev", &self.interface]).unwrap_or_default();
        for addr in &self.addresses {
            let prefix = if addr.is_ipv6() { 128 } else { 32 };
            let cidr = format!("{addr}/{prefix}");
            if present.split_whitespace().any(|word| word == cidr) {
                continue;
            }
            run("ip", &["addr", "replace", &cidr, "dev", &self.interface])?;
            added += 1;
        }
        for rule in self.rules() {
            if !run_ok(rule.tool(), &rule.args("-C")) {
                run(rule.tool(), &rule.args("-I"))?;
                added += 1;
            }
        }
        Ok(added)
    }

    /// Removes what `up` added, unless another DNS server answers on one of the addresses.
    /// Returns whether it did.
    pub fn down(&self) -> Result<bool, SetupError> {
        if let Some(addr) = self.served_address(Path::new("/proc/net")) {
            tracing::info!(%addr, port = self.port,
                "another DNS server answers on the node-local address: setup left in place");
            return Ok(false);
        }
        for rule in self.rules() {
            // Every copy (a rule added twice by a racing setup).
            while run_ok(rule.tool(), &rule.args("-C")) {
                run(rule.tool(), &rule.args("-D"))?;
            }
        }
        for addr in &self.addresses {
            let prefix = if addr.is_ipv6() { 128 } else { 32 };
            let cidr = format!("{addr}/{prefix}");
            let shown = output(
                "ip",
                &["-o", "addr", "show", "dev", &self.interface, "to", &cidr],
            );
            if shown.is_some_and(|s| !s.trim().is_empty()) {
                run("ip", &["addr", "del", &cidr, "dev", &self.interface])?;
            }
        }
        let details = output("ip", &["-d", "-o", "link", "show", "dev", &self.interface]);
        let addresses = output("ip", &["-o", "addr", "show", "dev", &self.interface]);
        if details.is_some_and(|d| d.contains(" dummy "))
            && addresses.is_some_and(|a| a.trim().is_empty())
        {
            run("ip", &["link", "del", &self.interface])?;
        }
        Ok(true)
    }

    /// An address of ours that a UDP socket on the port serves (bound to it or to the
    /// wildcard), per the socket tables under `proc_net`.
    pub fn served_address(&self, proc_net: &Path) -> Option<IpAddr> {
        let bound: Vec<(IpAddr, u16)> = ["udp", "udp6"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(proc_net.join(f)).ok())
            .flat_map(|table| parse_socket_table(&table))
            .collect();
        self.addresses.iter().copied().find(|addr| {
            bound.iter().any(|(ip, port)| {
                // A wildcard socket answers every address of its family; an IPv6 one
                // (dual-stack) IPv4 too.
                let wildcard = ip.is_unspecified() && (ip.is_ipv6() || addr.is_ipv4());
                *port == self.port && (ip == addr || wildcard)
            })
        })
    }
}

impl Rule {
    fn tool(&self) -> &'static str {
        if self.v6 {
            "ip6tables"
        } else {
            "iptables"
        }
    }

    /// `iptables -w 5 -t TABLE OP CHAIN SPEC...`
    fn args(&self, op: &'static str) -> Vec<&str> {
        let mut args = vec!["-w", "5", "-t", self.table, op, self.chain];
        args.extend(self.spec.iter().map(String::as_str));
        args
    }
}

/// Local addresses and ports of a `/proc/net/udp` or `udp6` table.
pub fn parse_socket_table(table: &str) -> Vec<(IpAddr, u16)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let local = line.split_whitespace().nth(1)?;
            let (addr, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let ip = match addr.len() {
                8 => IpAddr::from(
                    u32::from_str_radix(addr, 16)
                        .ok()?
                        .swap_bytes()
                        .to_be_bytes(),
                ),
                32 => {
                    // Four 32-bit words, each in host (little-endian) order.
                    let mut bytes = [0u8; 16];
                    for (i, word) in bytes.chunks_mut(4).enumerate() {
                        let value = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
                        word.copy_from_slice(&value.swap_bytes().to_be_bytes());
                    }
                    IpAddr::from(bytes)
                }
                _ => return None,
            };
            Some((ip, port))
        })
        .collect()
}

fn run(program: &str, args: &[&str]) -> Result<(), SetupError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| SetupError::Command {
            command: command.clone(),
            message: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SetupError::Command {
            command,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn run_ok(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_tables_are_read_in_host_order() {
        let udp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                   0: 0A14FEA9:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0\n\
                   1: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0\n\
                   2: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0\n";
        assert_eq!(
            parse_socket_table(udp),
            [
                ("169.254.20.10".parse().unwrap(), 53),
                ("0.0.0.0".parse().unwrap(), 53),
                ("127.0.0.53".parse().unwrap(), 53),
            ]
        );
        let udp6 = "  sl  local_address                         remote_address ...\n\
                    0: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07\n";
        assert_eq!(parse_socket_table(udp6), [("::1".parse().unwrap(), 53)]);
    }

    #[test]
    fn a_server_on_the_address_or_the_wildcard_keeps_the_setup() {
        let dir = std::env::temp_dir().join(format!("dnslens-proc-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let setup = NodeSetup {
            interface: "nodelocaldns".into(),
            addresses: vec![
                "169.254.20.10".parse().unwrap(),
                "10.96.0.10".parse().unwrap(),
            ],
            port: 53,
        };
        let header = "  sl  local_address rem_address   st\n";
        let table = |lines: &str| format!("{header}{lines}");
        std::fs::write(
            dir.join("udp"),
            table("0: 3500007F:0035 00000000:0000 07\n"),
        )
        .unwrap();
        assert_eq!(setup.served_address(&dir), None, "127.0.0.53 is not ours");
        std::fs::write(
            dir.join("udp"),
            table("0: 0A14FEA9:1F90 00000000:0000 07\n"),
        )
        .unwrap();
        assert_eq!(setup.served_address(&dir), None, "another port");
        std::fs::write(
            dir.join("udp"),
            table("0: 0A00600A:0035 00000000:0000 07\n"),
        )
        .unwrap();
        assert_eq!(
            setup.served_address(&dir),
            Some("10.96.0.10".parse().unwrap())
        );
        std::fs::write(
            dir.join("udp"),
            table("0: 00000000:0035 00000000:0000 07\n"),
        )
        .unwrap();
        assert_eq!(
            setup.served_address(&dir),
            Some("169.254.20.10".parse().unwrap())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_address_gets_ten_rules_marked_as_ours() {
        let setup = NodeSetup {
            interface: "nodelocaldns".into(),
            addresses: vec!["169.254.20.10".parse().unwrap(), "fd00::a".parse().unwrap()],
            port: 53,
        };
        let rules = setup.rules();
        assert_eq!(rules.len(), 20);
        assert!(rules
            .iter()
            .all(|r| r.spec.join(" ").contains("--comment dnslens")));
        let first = &rules[0];
        assert_eq!(
            (first.table, first.chain, first.spec.join(" ")),
            (
                "raw",
                "PREROUTING",
                "-d 169.254.20.10/32 -p udp -m udp --dport 53 -m comment --comment dnslens -j NOTRACK".to_string()
            )
        );
        assert_eq!(rules[10].tool(), "ip6tables");
        assert!(rules[10].spec.join(" ").starts_with("-d fd00::a/128"));
    }
}
