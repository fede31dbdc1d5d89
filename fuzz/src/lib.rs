//! Checks the fuzz targets share.
//!
//! Every type fuzzed here is written as well as read: route-registrar sends the registrations and announcements
//! the router and `lb` parse, `lb vip put` writes the VIPs `lb` reads from the bucket, and the config types derive
//! a serialiser too. So the strongest cheap invariant for each is the round trip: whatever was accepted, written
//! out and read back, is the same value and is accepted again. The helpers keep that check written once.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use switchyard_config::error::Validate;
use switchyard_config::messages::MessageLimits;
use switchyard_config::{parse_json, parse_yaml};

/// Serialises `value` to JSON, reads it back with `parse`, and checks that the value and its JSON are unchanged.
pub fn assert_json_round_trip<T, E>(value: &T, parse: impl Fn(&[u8]) -> Result<T, E>)
where
    T: Serialize + PartialEq + Debug,
    E: Debug,
{
    let json = serde_json::to_vec(value).expect("an accepted value serialises");
    let again = match parse(&json) {
        Ok(again) => again,
        Err(error) => panic!("{value:?} was accepted, but its JSON {} is refused: {error:?}", String::from_utf8_lossy(&json)),
    };
    assert_eq!(&again, value, "JSON round trip changed the value: {}", String::from_utf8_lossy(&json));
    let json_again = serde_json::to_vec(&again).expect("an accepted value serialises");
    assert_eq!(json, json_again, "serialising is not a fixed point");
}

/// Writes a loaded config document out as JSON and as YAML and checks that both load back to the same value,
/// with every key known (the serialiser writes only keys the loader reads).
pub fn assert_config_round_trip<T>(value: &T)
where
    T: Serialize + DeserializeOwned + Validate + PartialEq + Debug,
{
    let json = serde_json::to_string(value).expect("an accepted config serialises to JSON");
    let yaml = serde_yaml_ng::to_string(value).expect("an accepted config serialises to YAML");
    for (format, text, loaded) in [("JSON", &json, parse_json::<T>(&json)), ("YAML", &yaml, parse_yaml::<T>(&yaml))] {
        match loaded {
            Ok(loaded) => {
                assert_eq!(&loaded.value, value, "{format} round trip changed the config:\n{text}");
                assert!(loaded.ignored_keys.is_empty(), "written keys read as unknown: {:?}", loaded.ignored_keys);
            }
            Err(error) => panic!("config was accepted, but its {format} is refused: {error}\n{text}"),
        }
    }
}

/// Limits with room for any re-serialised message: a number written as a string, or an escape written out, may
/// make it longer than the payload it came from.
pub const UNLIMITED: MessageLimits = MessageLimits { max_payload_bytes: usize::MAX, max_uris: usize::MAX, allow_loopback_hosts: true };

/// Parses a bus message under the default limits and under `strict` ones, checks that the strict limits accept
/// nothing the defaults refuse (and accept it unchanged), and returns the verdict under the defaults.
pub fn parse_message<T, E>(payload: &[u8], strict: &MessageLimits, parse: impl Fn(&[u8], &MessageLimits) -> Result<T, E>) -> Result<T, E>
where
    T: PartialEq + Debug,
{
    let parsed = parse(payload, &MessageLimits::default());
    if let Ok(tight) = parse(payload, strict) {
        assert_eq!(parsed.as_ref().ok(), Some(&tight), "accepted under strict limits but not under the defaults");
    }
    parsed
}
