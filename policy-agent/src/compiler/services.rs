//! Services in the maps: every frontend (address, protocol, port) names the Service port
//! (or host port) behind it, and for every egress ruleset of the node's pods the compiler
//! decides ahead of time whether it allows the connection to every backend, to some or to
//! none. The datapath sees a connection before the node's proxy picks the backend, so a
//! frontend whose backends the ruleset does not all allow is never allowed.

use std::collections::{BTreeMap, BTreeSet};

use policy_common::{
    decide,
    maps::{
        Direction, EP_EGRESS_ISOLATED, EndpointInfo, FRONTEND_NONE, FrontendKey, FrontendValue,
        IpKey, SERVICE_ALLOWED, SERVICE_BACKENDS_DIFFER, ServicePolicyKey, ServicePolicyValue,
    },
};

use super::{
    Compiled, NodeConfig,
    ids::IdAllocator,
    ip_key,
    lookup::{Lookup, PrefixLengths},
};
use crate::{
    model::Cluster,
    semantics::services::{self, Forward, Forwarder},
};

/// A frontend id's key: what forwards, and the address family of its frontends.
pub type FrontendId = (Forwarder, bool);

/// Writes FRONTENDS and SERVICE_POLICY of `cluster` for `node` into `out` (whose rulesets
/// and ipcache are complete), with frontend ids from `ids`.
pub fn compile(
    ids: &mut IdAllocator<FrontendId>,
    cluster: &Cluster,
    node: &NodeConfig,
    out: &mut Compiled,
) {
    let forwards = services::forwards(cluster, &node.name, &node.addresses);
    for f in &forwards {
        for fe in &f.frontends {
            let key = (f.forwarder.clone(), fe.address.is_ipv6());
            let id = ids.id(&key);
            out.frontend_names.insert(id, key);
            let mut backends = f.backends_for(fe.address);
            let only_backend = match (backends.next(), backends.next()) {
                (Some(b), None) => ip_key(b.address),
                _ => IpKey::default(),
            };
            out.frontends.insert(
                FrontendKey::new(ip_key(fe.address), fe.protocol.number(), fe.port),
                FrontendValue {
                    frontend: id,
                    only_backend,
                },
            );
        }
    }
    // Addresses only Services answer on: any other port there leads nowhere.
    for ip in services::service_addresses(cluster) {
        out.frontends
            .entry(FrontendKey::address(ip_key(ip)))
            .or_insert(FrontendValue {
                frontend: FRONTEND_NONE,
                only_backend: IpKey::default(),
            });
    }

    let rulesets: BTreeSet<u32> = out
        .endpoints
        .values()
        .filter(|e| e.is_isolated(Direction::Egress))
        .map(|e| e.egress_ruleset)
        .collect();
    let lengths = PrefixLengths::of(out);
    let maps = Lookup::new(out, &lengths);
    let mut verdicts = BTreeMap::new();
    for ruleset in rulesets {
        let ep = EndpointInfo {
            egress_ruleset: ruleset,
            flags: EP_EGRESS_ISOLATED,
            ..EndpointInfo::default()
        };
        for f in &forwards {
            for v6 in [false, true] {
                let Some(fe) = f.frontends.iter().find(|fe| fe.address.is_ipv6() == v6) else {
                    continue;
                };
                let Some(&id) = ids.get(&(f.forwarder.clone(), v6)) else {
                    continue;
                };
                if let Some(verdict) = verdict(&maps, &ep, f, fe.address, fe.protocol.number()) {
                    verdicts.insert(
                        ServicePolicyKey {
                            ruleset,
                            frontend: id,
                        },
                        verdict,
                    );
                }
            }
        }
    }
    out.service_policy = verdicts;
}

/// What `ep`'s egress ruleset says of the backends `f`'s frontends of `address`'s family
/// forward to: allowed to all, to some, or (`None`) to none (or there are none).
fn verdict(
    maps: &Lookup<'_>,
    ep: &EndpointInfo,
    f: &Forward,
    address: std::net::IpAddr,
    proto: u8,
) -> Option<ServicePolicyValue> {
    let allowed: Vec<Option<u32>> = f
        .backends_for(address)
        .map(|b| {
            decide::new_flow(
                maps,
                ep,
                Direction::Egress,
                &ip_key(b.address),
                proto,
                b.port,
                true,
            )
            .allowed
            .map(|(_, policy)| policy)
        })
        .collect();
    let first = allowed.iter().flatten().next().copied()?;
    Some(if allowed.iter().all(Option::is_some) {
        ServicePolicyValue {
            policy_id: first,
            verdict: SERVICE_ALLOWED,
            _pad: [0; 3],
        }
    } else {
        ServicePolicyValue {
            policy_id: 0,
            verdict: SERVICE_BACKENDS_DIFFER,
            _pad: [0; 3],
        }
    })
}
