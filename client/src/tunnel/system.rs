//! What kernel mode changes on the machine, as plain data: the `ip` and `resolvectl`
//! commands it runs and the `/etc/resolv.conf` edit it makes and undoes. Building them is
//! pure (and tested); [`run_command`] executes one.

use super::error::TunnelError;
use super::plan::{Cidr, TunnelPlan};
use std::process::Command;

/// The line marking the agent's `nameserver` in `/etc/resolv.conf`.
pub const RESOLV_MARKER: &str = "# added by postern connect; removed when it exits";

/// Commands adding the IPv6 address and the routes for the service ranges (never a
/// default route) to `dev`. The IPv4 address is set when the device is created.
pub fn route_commands(plan: &TunnelPlan, dev: &str) -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    if let Some(a6) = &plan.address6 {
        cmds.push(ip(&["-6", "addr", "add", &a6.to_string(), "dev", dev]));
    }
    let mut routes: Vec<Cidr> = plan.routes.clone();
    if !routes.iter().any(|r| r.contains(plan.dns)) {
        routes.push(Cidr {
            addr: plan.dns,
            prefix: if plan.dns.is_ipv4() { 32 } else { 128 },
        });
    }
    for r in routes.iter().filter(|r| r.prefix > 0) {
        if r.addr.is_ipv6() && plan.address6.is_none() {
            continue;
        }
        let family = if r.addr.is_ipv4() { "-4" } else { "-6" };
        cmds.push(ip(&[
            family,
            "route",
            "replace",
            &r.to_string(),
            "dev",
            dev,
        ]));
    }
    cmds
}

/// `resolvectl` commands sending `<name>.<dnsDomain>` lookups to the tunnel's DNS server.
pub fn resolvectl_commands(plan: &TunnelPlan, dev: &str) -> Vec<Vec<String>> {
    vec![
        strings(&["resolvectl", "dns", dev, &plan.dns.to_string()]),
        strings(&[
            "resolvectl",
            "domain",
            dev,
            &format!("~{}", plan.dns_domain),
        ]),
    ]
}

/// `/etc/resolv.conf` with the tunnel's nameserver first (marked, so it can be recognised).
pub fn prepend_nameserver(original: &str, dns: &str) -> String {
    format!("{RESOLV_MARKER}\nnameserver {dns}\n{original}")
}

/// Whether `current` still carries the agent's edit.
pub fn has_our_nameserver(current: &str) -> bool {
    current.lines().any(|l| l == RESOLV_MARKER)
}

/// Whether the process may create a TUN device: effective uid 0, or CAP_NET_ADMIN (bit 12)
/// in `CapEff` of `/proc/self/status`.
pub fn privileged(euid_is_root: bool, proc_status: &str) -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    euid_is_root
        || proc_status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// Runs one command, failing with its stderr.
pub fn run_command(cmd: &[String]) -> Result<(), TunnelError> {
    let text = cmd.join(" ");
    let (prog, args) = cmd.split_first().ok_or_else(|| TunnelError::Command {
        command: String::new(),
        detail: "empty command".into(),
    })?;
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| TunnelError::Command {
            command: text.clone(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TunnelError::Command {
            command: text,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Whether systemd-resolved manages DNS here (its stub is in use and `resolvectl` exists).
pub fn resolved_available() -> bool {
    std::path::Path::new("/run/systemd/resolve/stub-resolv.conf").exists()
        && Command::new("resolvectl")
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success())
}

fn ip(args: &[&str]) -> Vec<String> {
    let mut v = vec!["ip".to_string()];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_common::api::TunnelConnectResponse;

    fn plan(dns: &str, v6: bool) -> TunnelPlan {
        let r = TunnelConnectResponse {
            address: "100.64.0.2/32".into(),
            address6: if v6 {
                "fd70:7374::2/128".into()
            } else {
                String::new()
            },
            gateway_public_key: postern_common::wireguard::KeyPair::generate()
                .public
                .to_base64(),
            endpoint: "gw:51820".into(),
            service_range: "100.65.0.0/16".into(),
            service_range6: "fd70:7375::/64".into(),
            dns: dns.into(),
            dns_domain: "local".into(),
            keepalive_seconds: 25,
            services: vec![],
            new_peer: true,
        };
        TunnelPlan::from_response(&r).unwrap()
    }

    #[test]
    fn routes_cover_the_service_ranges_only() {
        let cmds: Vec<String> = route_commands(&plan("100.65.0.53", true), "postern0")
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "ip -6 addr add fd70:7374::2/128 dev postern0",
                "ip -4 route replace 100.65.0.0/16 dev postern0",
                "ip -6 route replace fd70:7375::/64 dev postern0",
            ]
        );
        let cmds: Vec<String> = route_commands(&plan("100.66.0.53", false), "tun1")
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "ip -4 route replace 100.65.0.0/16 dev tun1",
                "ip -4 route replace 100.66.0.53/32 dev tun1",
            ]
        );
        assert!(!cmds
            .iter()
            .any(|c| c.contains("default") || c.contains("/0 ")));
    }

    #[test]
    fn resolvectl_routes_the_tunnel_domain() {
        let cmds = resolvectl_commands(&plan("100.65.0.53", false), "postern0");
        assert_eq!(cmds[0].join(" "), "resolvectl dns postern0 100.65.0.53");
        assert_eq!(cmds[1].join(" "), "resolvectl domain postern0 ~local");
    }

    #[test]
    fn resolv_conf_edit_is_marked() {
        let edited = prepend_nameserver("nameserver 1.1.1.1\n", "100.65.0.53");
        assert!(edited.starts_with(RESOLV_MARKER));
        assert!(edited.contains("nameserver 100.65.0.53\nnameserver 1.1.1.1\n"));
        assert!(has_our_nameserver(&edited));
        assert!(!has_our_nameserver("nameserver 1.1.1.1\n"));
    }

    #[test]
    fn privilege_check_reads_cap_net_admin() {
        assert!(privileged(true, ""));
        assert!(privileged(false, "Name:\tx\nCapEff:\t0000000000001000\n"));
        assert!(!privileged(false, "CapEff:\t0000000000000000\n"));
        assert!(!privileged(false, "garbage"));
    }
}
