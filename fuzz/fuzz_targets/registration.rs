//! `router.register` / `router.unregister` payloads, as the router reads them off the bus.
//!
//! Any emitter on the bus can send anything, and every router parses every message, so a payload that panics the
//! parser takes the whole fleet down at once. Beyond not panicking, an accepted registration must hold what the
//! checks promise (nothing that could end up in a header, a socket address or a route key unchecked), stricter
//! limits must never accept what looser ones refuse, and route-registrar's serialised form of it must parse back
//! to the same registration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_config::messages::{MAX_URI_LEN, MessageLimits, Registration, check_backend_host, check_route_uri};
use switchyard_fuzz::{UNLIMITED, assert_json_round_trip, parse_message};

fuzz_target!(|payload: &[u8]| {
    let strict = MessageLimits { max_payload_bytes: 1024, max_uris: 4, allow_loopback_hosts: false };
    match parse_message(payload, &strict, Registration::parse) {
        Ok(registration) => accepted(&registration, &MessageLimits::default()),
        Err(error) => {
            assert!(!error.reason().is_empty());
            assert!(!error.to_string().is_empty());
        }
    }
});

fn accepted(registration: &Registration, limits: &MessageLimits) {
    assert_eq!(registration.check(limits), Ok(()), "checking an accepted registration again changed the verdict");
    assert_eq!(check_backend_host(&registration.host, limits), Ok(()));
    assert_ne!(registration.effective_port(), 0);
    assert_eq!(registration.is_tls(), registration.tls_port != 0);
    assert!(!registration.uris.is_empty() && registration.uris.len() <= limits.max_uris);
    for uri in &registration.uris {
        assert_eq!(check_route_uri(uri), Ok(()));
        assert!(uri.len() <= MAX_URI_LEN && uri.bytes().all(|b| b.is_ascii_graphic()), "uri {uri:?} slipped through");
    }
    let texts = [
        &registration.host,
        &registration.app,
        &registration.private_instance_id,
        &registration.private_instance_index,
        &registration.server_cert_domain_san,
        &registration.route_service_url,
        &registration.isolation_segment,
        &registration.availability_zone,
        &registration.options.hash_header,
    ];
    for text in texts.into_iter().chain(registration.tags.iter().flat_map(|(k, v)| [k, v])) {
        assert!(!text.chars().any(char::is_control), "control character in {text:?}");
    }
    assert!(registration.route_service_url.is_empty() || registration.route_service_url.starts_with("https://"));
    assert!(registration.backend_protocol().is_ok());
    let _ = registration.lb_algorithm();
    assert_json_round_trip(registration, |json| Registration::parse(json, &UNLIMITED));
}
