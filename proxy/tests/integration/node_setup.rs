//! `dnslens node-setup` in a network namespace of its own: `up` adds the addresses and the
//! NOTRACK/ACCEPT rules once however often it runs, `down` leaves everything while another
//! DNS server answers on the address (the new pod of a rolling update), and removes every
//! trace once nobody does.

use std::process::Command;

use crate::harness::*;

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
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
    let status = Command::new("unshare")
        .args(["-n", "bash", "-c", &script])
        .status()
        .expect("unshare (util-linux) is needed, as root");
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
    assert!(
        status.success(),
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
