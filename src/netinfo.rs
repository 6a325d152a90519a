//! Facts about this machine's network that build needs as plain data.

use std::collections::BTreeSet;
use std::net::IpAddr;

/// Every address of this machine's interfaces (loopback included): a
/// backend on one of them at one of wicket's own ports is wicket itself.
pub fn local_addresses() -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(addr) = a.address else { continue };
            if let Some(v4) = addr.as_sockaddr_in() {
                out.insert(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                out.insert(IpAddr::V6(v6.ip()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_one_of_this_machines_addresses() {
        assert!(super::local_addresses().contains(&std::net::IpAddr::from([127, 0, 0, 1])));
    }
}
