//! The `lb` config file and the VIP spec JSON stored as a value in the JetStream KV bucket.
//!
//! Both reach `lb` while it is forwarding traffic: the file on reload, a KV value whenever anyone with bucket
//! access writes one. Neither may panic it. The VIP is the same type in both places and the module promises that a
//! VIP loads from one exactly when it loads from the other, with errors naming the same key; this target holds it
//! to that, in both directions, and to the JSON/YAML round trip of whatever loads.
//!
//! Each input is read both ways: as a config file (YAML) and as a KV value (JSON).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_config::error::Validate;
use switchyard_config::lb::{LbConfig, VipSpec};
use switchyard_config::{parse_json, parse_yaml};
use switchyard_fuzz::{assert_config_round_trip, assert_json_round_trip};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        config_file(text);
    }
    kv_value(data);
});

fn config_file(text: &str) {
    let Ok(loaded) = parse_yaml::<LbConfig>(text) else { return };
    let config = loaded.value;
    assert_eq!(config.validate(), Ok(()));
    assert_config_round_trip(&config);
    // Every VIP of a valid file is a valid KV value, and the same VIP.
    for vip in &config.vips {
        let json = serde_json::to_vec(vip).expect("a VIP serialises");
        match VipSpec::from_json(&json) {
            Ok(loaded) => assert_eq!(&loaded.value, vip),
            Err(error) => panic!("a VIP of a valid file is refused as a KV value: {error}\n{}", String::from_utf8_lossy(&json)),
        }
    }
}

fn kv_value(payload: &[u8]) {
    let kv = VipSpec::from_json(payload);
    if let Ok(loaded) = &kv {
        assert_eq!(loaded.value.validate(), Ok(()));
        assert_json_round_trip(&loaded.value, |json| VipSpec::from_json(json).map(|loaded| loaded.value));
    }
    // The same text as the one VIP of a config file. Only when it is one JSON value, so splicing it in cannot
    // change the document's shape.
    let Ok(text) = std::str::from_utf8(payload) else { return };
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return;
    }
    let file = parse_json::<LbConfig>(&format!("{{\"vips\": [{text}]}}"));
    match (kv, file) {
        (Ok(kv), Ok(file)) => assert_eq!(file.value.vips, vec![kv.value]),
        (Err(kv), Err(file)) => assert_eq!(file.key, file_key(&kv.key), "KV error {kv} but file error {file}"),
        (Ok(kv), Err(file)) => panic!("{:?} loads from the bucket but not from a file: {file}", kv.value),
        (Err(kv), Ok(file)) => panic!("{:?} loads from a file but not from the bucket: {kv}", file.value.vips),
    }
}

/// Where a problem at `key` of a KV value is reported when the VIP is `vips[0]` of a file.
fn file_key(key: &str) -> String {
    if key.is_empty() {
        "vips[0]".to_owned()
    } else if key.starts_with('[') {
        format!("vips[0]{key}")
    } else {
        format!("vips[0].{key}")
    }
}
