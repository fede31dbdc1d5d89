//! The router's YAML config file, as the loader reads it at start-up and on every reload.
//!
//! A reload that panics kills a router that was serving, so a config must be refused with an error, never with a
//! crash, whatever an operator or a templating tool writes. What the loader accepts must pass validation (the
//! loader's own promise), its derived values must compute, and written back out as JSON or YAML it must load to
//! the same config with no key unknown, so a config the router prints or a tool rewrites means what it meant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_config::error::Validate;
use switchyard_config::parse_yaml;
use switchyard_config::router::RouterConfig;
use switchyard_fuzz::assert_config_round_trip;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let config = match parse_yaml::<RouterConfig>(text) {
        Ok(loaded) => loaded.value,
        Err(error) => {
            assert!(!error.problem.is_empty(), "an error without a problem, at key {:?}", error.key);
            return;
        }
    };
    assert_eq!(config.validate(), Ok(()));
    assert!(config.cipher_suite_list().is_ok(), "validation passed but the cipher list does not read");
    assert!(config.effective_stale_threshold() >= config.droplet_stale_threshold);
    let _ = (config.effective_drain_timeout(), config.client_ca_pems());
    assert_config_round_trip(&config);
});
