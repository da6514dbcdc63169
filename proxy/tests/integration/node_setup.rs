//! `dnslens node-setup` in a network namespace of its own: `up` adds the addresses and the
//! NOTRACK/ACCEPT rules once however often it runs, `down` leaves everything while another
//! DNS server answers on the address (the new pod of a rolling update), and removes every
//! trace once nobody does.

use std::process::Command;

use crate::harness::*;

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// Runs `script` (bash) in a network namespace of its own; whether it succeeded.
fn in_own_network(script: &str) -> bool {
    Command::new("unshare")
        .args(["-n", "bash", "-c", script])
        .status()
        .expect("unshare (util-linux) is needed, as root")
        .success()
}

#[test]
fn setup_is_idempotent_kept_while_served_and_leaves_nothing_behind() {
    let dir = TempDir::new("node-setup");
    let d = &dir.0;
    let script = format!(
        r#"set -eu
cd "{d}"
ip link set lo up
# A dummy interface where the kernel has the driver (NodeLocal DNSCache's); lo otherwise.
if ip link add probe0 type dummy 2>/dev/null; then ip link del probe0; IF=nodelocaldns; else IF=lo; fi
echo $IF >iface.txt
setup() {{ "{dnslens}" node-setup "$1" --interface $IF --address 169.254.20.10 --address 10.96.0.10; }}
snapshot() {{
  ip -o addr show >"addrs-$1.txt"
  ip -o link show >"links-$1.txt"
  {{ iptables -w -t raw -S; iptables -w -t filter -S; }} >"rules-$1.txt"
}}
setup up 2>up1.log
setup up 2>up2.log
snapshot up
"{dnslens}" serve --listen 169.254.20.10:53 --upstream 127.0.0.1:5300 \
  --metrics-listen 127.0.0.1:9253 2>serve.log & srv=$!
for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/9253) 2>/dev/null && break; sleep 0.05; done
setup down 2>down-served.log
snapshot served
kill $srv; wait $srv || true
setup down 2>down.log
snapshot down
"#,
        d = d.display(),
        dnslens = env!("CARGO_BIN_EXE_dnslens"),
    );
    let ok = in_own_network(&script);
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
    assert!(
        ok,
        "script failed:\nup: {}\ndown: {}\nserve: {}",
        read("up1.log"),
        read("down.log"),
        read("serve.log")
    );
    let iface = read("iface.txt").trim().to_string();
    if iface == "lo" {
        eprintln!("this kernel has no dummy interface driver: node-setup tested on lo");
    }
    // Up, twice: each address once, ten rules per address (five per protocol), no copies.
    let (addrs, rules) = (read("addrs-up.txt"), read("rules-up.txt"));
    for addr in ["169.254.20.10/32", "10.96.0.10/32"] {
        assert_eq!(count(&addrs, &format!("inet {addr}")), 1, "{addrs}");
        assert_eq!(count(&rules, &format!(" {addr} ")), 10, "{rules}");
    }
    assert_eq!(count(&rules, "--comment dnslens"), 20, "{rules}");
    for rule in [
        "-A PREROUTING -d 169.254.20.10/32 -p udp -m udp --dport 53 -m comment --comment dnslens -j NOTRACK",
        "-A OUTPUT -s 169.254.20.10/32 -p tcp -m tcp --sport 53 -m comment --comment dnslens -j NOTRACK",
        "-A INPUT -d 10.96.0.10/32 -p udp -m udp --dport 53 -m comment --comment dnslens -j ACCEPT",
    ] {
        assert!(rules.contains(rule), "{rule} in\n{rules}");
    }
    if iface == "nodelocaldns" {
        assert!(read("links-up.txt").contains("nodelocaldns"));
    }
    // Down while dnslens answers on the address: everything stays.
    assert!(
        read("down-served.log").contains("left in place"),
        "{}",
        read("down-served.log")
    );
    assert_eq!(read("rules-served.txt"), rules);
    assert_eq!(read("addrs-served.txt"), addrs);
    // Down once nobody does: nothing of dnslens is left.
    assert!(read("down.log").contains("removed"), "{}", read("down.log"));
    let (addrs, rules) = (read("addrs-down.txt"), read("rules-down.txt"));
    assert_eq!(count(&rules, "dnslens"), 0, "{rules}");
    for addr in ["169.254.20.10", "10.96.0.10"] {
        assert_eq!(count(&addrs, addr), 0, "{addrs}");
    }
    assert!(!read("links-down.txt").contains("nodelocaldns"));
}

/// `hold` re-asserts the setup, as node-cache re-asserts its rules: a rule and an address
/// deleted behind its back (a firewall reload, another agent's flush) are back at the next
/// check, the repairs counted in the status file and exported by the node-local dnslens
/// (`admin.node_setup_status`) as `dnslens_node_setup_repairs_total`; SIGTERM still tears
/// everything down.
#[test]
fn hold_puts_back_what_went_missing_and_counts_it() {
    let dir = TempDir::new("node-setup-hold");
    let d = &dir.0;
    let script = format!(
        r#"set -eu
cd "{d}"
ip link set lo up
if ip link add probe0 type dummy 2>/dev/null; then ip link del probe0; IF=nodelocaldns; else IF=lo; fi
"{dnslens}" node-setup hold --interface $IF --address 169.254.20.10 --check-every 300ms \
  --status-file "{d}/status" --ready-file "{d}/ready" 2>hold.log & hold=$!
for i in $(seq 100); do [ -f ready ] && break; sleep 0.05; done
printf 'admin:\n  node_setup_status: {d}/status\n' >dnslens.yaml
"{dnslens}" serve --config dnslens.yaml --listen 127.0.0.1:5353 --upstream 127.0.0.1:5300 \
  --metrics-listen 127.0.0.1:9253 2>serve.log & srv=$!
for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/9253) 2>/dev/null && break; sleep 0.05; done
exec 3<>/dev/tcp/127.0.0.1/9253; printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3; cat <&3 >metrics-before.txt
# Behind hold's back: one rule and the address go.
iptables -w -t raw -D PREROUTING -d 169.254.20.10/32 -p udp -m udp --dport 53 -m comment --comment dnslens -j NOTRACK
ip addr del 169.254.20.10/32 dev $IF
iptables -w -t raw -S >rules-broken.txt
for i in $(seq 100); do grep -q '^repairs 2$' status && break; sleep 0.05; done
{{ iptables -w -t raw -S; iptables -w -t filter -S; }} >rules-repaired.txt
ip -o addr show >addrs-repaired.txt
exec 3<>/dev/tcp/127.0.0.1/9253; printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3; cat <&3 >metrics-after.txt
kill $srv; wait $srv || true
kill $hold; wait $hold || true
{{ iptables -w -t raw -S; iptables -w -t filter -S; }} >rules-down.txt
"#,
        d = d.display(),
        dnslens = env!("CARGO_BIN_EXE_dnslens"),
    );
    let ok = in_own_network(&script);
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
    assert!(ok, "script failed:\nhold: {}", read("hold.log"));
    let rule = "-A PREROUTING -d 169.254.20.10/32 -p udp -m udp --dport 53 -m comment --comment dnslens -j NOTRACK";
    assert!(
        !read("rules-broken.txt").contains(rule),
        "the rule was deleted"
    );
    // Put back: the rule once, the address once; both counted.
    assert_eq!(count(&read("rules-repaired.txt"), rule), 1);
    assert_eq!(count(&read("rules-repaired.txt"), "--comment dnslens"), 10);
    assert_eq!(
        count(&read("addrs-repaired.txt"), "inet 169.254.20.10/32"),
        1
    );
    assert!(
        read("status").starts_with("repairs 2\nchecked "),
        "{}",
        read("status")
    );
    assert!(
        read("hold.log").contains("node setup repaired"),
        "{}",
        read("hold.log")
    );
    // Exported by dnslens: 0 before, 2 after.
    assert_eq!(
        series_value(
            &read("metrics-before.txt"),
            "dnslens_node_setup_repairs_total"
        ),
        0.0
    );
    assert_eq!(
        series_value(
            &read("metrics-after.txt"),
            "dnslens_node_setup_repairs_total"
        ),
        2.0
    );
    assert!(
        series_value(
            &read("metrics-after.txt"),
            "dnslens_node_setup_last_check_timestamp_seconds"
        ) > 1.7e9
    );
    // SIGTERM: torn down as before.
    assert_eq!(
        count(&read("rules-down.txt"), "dnslens"),
        0,
        "{}",
        read("rules-down.txt")
    );
}
