use policy_agent::datapath::Datapath;
use policy_common::maps::*;

#[test]
fn loads() {
    let mut dp = Datapath::load("scratch").unwrap();
    dp.set_endpoint(7, &EndpointInfo { endpoint_id: 3, ingress_ruleset: 1, flags: EP_INGRESS_ISOLATED, ..Default::default() }).unwrap();
    println!("{}", dp.pin_dir().display());
}
