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
    plan::{Host, Question},
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
