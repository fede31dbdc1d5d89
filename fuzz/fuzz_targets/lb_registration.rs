//! `lb.register` / `lb.unregister` announcements, as `lb` reads them off the bus.
//!
//! An announcement names a kernel rule (a VIP's real server), so what passes its check must be something the VIP
//! checks of the config accept as a backend too, or a cell could put `lb` into a state it refuses to program.
//! Beyond not panicking: stricter limits never accept more, an accepted announcement names an IP host, a VIP name
//! that is a valid NATS token and a port, it is accepted by `check_backend` for a VIP of its address family, and
//! route-registrar's serialised form of it parses back to the same announcement.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use switchyard_config::lb::{MAX_WEIGHT, check_backend};
use switchyard_config::messages::{LbRegistration, MessageLimits, check_vip_name};
use switchyard_fuzz::{UNLIMITED, assert_json_round_trip, parse_message};

fuzz_target!(|payload: &[u8]| {
    let strict = MessageLimits { max_payload_bytes: 256, max_uris: 1, allow_loopback_hosts: false };
    let announcement = match parse_message(payload, &strict, LbRegistration::parse) {
        Ok(announcement) => announcement,
        Err(error) => {
            assert!(!error.reason().is_empty());
            return;
        }
    };
    assert_eq!(announcement.check(&MessageLimits::default()), Ok(()));
    assert!(check_vip_name(&announcement.vip), "vip {:?} is not a valid name", announcement.vip);
    assert_ne!(announcement.port, 0);
    let host: IpAddr = announcement.host.parse().expect("an accepted announcement names an IP address");
    let vip_address: IpAddr = if host.is_ipv4() { [198, 18, 0, 1].into() } else { "2001:db8::1".parse().expect("literal") };
    let weight = announcement.weight.min(MAX_WEIGHT);
    if let Err(error) = check_backend("", vip_address, host, announcement.port, weight) {
        panic!("announcement {announcement:?} passed its check, but the VIP checks refuse it: {error}");
    }
    assert_json_round_trip(&announcement, |json| LbRegistration::parse(json, &UNLIMITED));
});
