//! Evaluators: one question ("may this flow start?") answered from the semantics
//! ([`reference`]) and from the compiled maps with the datapath's own lookups
//! ([`compiled`]). The kernel answers it too, with real packets (the lab) or crafted ones
//! (BPF_PROG_TEST_RUN); tests demand that all agree.

pub mod compiled;
pub mod explain;
pub mod reference;

use std::net::IpAddr;

use crate::{
    model::Protocol,
    plan::{Host, Question, ServiceQuestion, ServiceTarget},
    report::Family,
};

/// A flow's first packet between two hosts of a plan.
#[derive(Clone, Copy, Debug)]
pub struct Flow<'a> {
    /// Source host.
    pub from: &'a Host,
    /// Destination host.
    pub to: &'a Host,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
}

impl<'a> Flow<'a> {
    /// The flow a question asks about; `None` if a host lacks the question's family.
    pub fn of(hosts: &'a [Host], q: &Question) -> Option<Self> {
        let (from, to) = (&hosts[q.from], &hosts[q.to]);
        Some(Self {
            from,
            to,
            src: from.ip(q.family)?,
            dst: to.ip(q.family)?,
            protocol: q.protocol,
            port: q.port,
        })
    }

    /// The address family.
    pub fn family(&self) -> Family {
        Family::of(&self.src)
    }
}

/// A pod's connection to a Service frontend (a cluster IP and port).
#[derive(Clone, Copy, Debug)]
pub struct ServiceFlow<'a> {
    /// The client.
    pub from: &'a Host,
    /// Its address of the frontend's family.
    pub src: IpAddr,
    /// The frontend and its backends.
    pub target: &'a ServiceTarget,
}

impl<'a> ServiceFlow<'a> {
    /// The flow a Service question asks about; `None` if the client lacks the family.
    pub fn of(
        hosts: &'a [Host],
        targets: &'a [ServiceTarget],
        q: &ServiceQuestion,
    ) -> Option<Self> {
        let (from, target) = (&hosts[q.from], &targets[q.target]);
        Some(Self {
            from,
            src: from.ip(target.family())?,
            target,
        })
    }
}

/// The verdict on a connection through a Service when it does not depend on the backend the
/// proxy picks, given, for each backend, whether the client's egress allows it and whether
/// the backend's ingress does: denied unless the egress allows every backend (the datapath
/// decides before the proxy picks); then allowed if every backend's ingress allows it,
/// denied if none does, and `None` (the proxy's choice decides) otherwise.
pub fn service_verdict(backends: &[(bool, bool)]) -> Option<bool> {
    if backends.is_empty() || !backends.iter().all(|(egress, _)| *egress) {
        return Some(false);
    }
    let admitted = backends.iter().filter(|(_, ingress)| *ingress).count();
    match admitted {
        n if n == backends.len() => Some(true),
        0 => Some(false),
        _ => None,
    }
}
