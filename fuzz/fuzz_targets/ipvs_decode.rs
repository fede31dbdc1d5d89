//! Datagrams from the kernel's IPVS generic netlink family, as `lb` decodes them after every request and dump.
//!
//! The kernel is trusted, but not every kernel writes the same attributes (older ones omit the destination family,
//! newer ones add attributes and padding), other tools may have created services `lb` has to read, and a decoding
//! panic would stop `lb` from repairing the dataplane. So: no datagram panics the decoder; a datagram decodes as
//! its messages would one by one (splitting at a message boundary changes nothing); and every service and real
//! server it decodes, encoded as the request that would create it and decoded again, comes back unchanged, which
//! pins the request encoder to the reply decoder on exactly the values the kernel can report.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_lb::ipvs::codec::{self, Reply, ReplyBody};
use switchyard_lb::ipvs::{Change, Destination, Service, ServiceKey};

/// The family id `lb` would have resolved; any value other than the controller's works.
const FAMILY: u16 = 0x24;

/// Longer scheduler names never come from a kernel (`IPVS_SCHEDNAME_MAXLEN` is 16) and could not be re-encoded
/// into one netlink attribute anyway.
const MAX_SCHEDULER_LEN: usize = 1024;

fuzz_target!(|datagram: &[u8]| {
    let Ok(replies) = codec::decode(datagram) else { return };
    split_decodes_the_same(datagram, &replies);
    for (index, reply) in replies.iter().enumerate() {
        let sequence = u32::try_from(index).unwrap_or(u32::MAX);
        match &reply.body {
            ReplyBody::Service(entry) if entry.service.scheduler.len() <= MAX_SCHEDULER_LEN => {
                service_round_trip(&entry.service, sequence);
            }
            ReplyBody::Destination(entry) => destination_round_trip(&entry.destination, sequence),
            ReplyBody::Error(errno) => assert!(*errno >= 0, "errno {errno} is reported negative"),
            _ => {}
        }
    }
});

/// Messages start on 4-byte boundaries, so cutting a datagram at one that ends a message must give the same
/// replies as decoding the whole.
fn split_decodes_the_same(datagram: &[u8], replies: &[Reply]) {
    let cut = (datagram.len() / 2) & !3;
    let (head, tail) = datagram.split_at(cut);
    let Ok(mut parts) = codec::decode(head) else { return };
    let tail = codec::decode(tail).expect("the whole decoded and its head did, so its tail must");
    parts.extend(tail);
    assert_eq!(parts, replies, "decoding in two parts differs from decoding the whole");
}

fn decode_one(bytes: &[u8]) -> Reply {
    let mut replies = codec::decode(bytes).expect("an encoded request decodes");
    assert_eq!(replies.len(), 1, "one request encodes to one message");
    replies.remove(0)
}

fn service_round_trip(service: &Service, sequence: u32) {
    let mut bytes = Vec::new();
    codec::encode_change(&mut bytes, FAMILY, sequence, &Change::AddService(service.clone()));
    let reply = decode_one(&bytes);
    assert_eq!(reply.sequence, sequence);
    match reply.body {
        ReplyBody::Service(entry) => assert_eq!(&entry.service, service, "service changed through encode and decode"),
        other => panic!("an encoded service decodes as {other:?}"),
    }
}

fn destination_round_trip(destination: &Destination, sequence: u32) {
    let service = ServiceKey::FirewallMark { ipv6: destination.key.address.is_ipv6(), mark: 1 };
    let mut bytes = Vec::new();
    codec::encode_change(&mut bytes, FAMILY, sequence, &Change::AddDestination(service, *destination));
    match decode_one(&bytes).body {
        ReplyBody::Destination(entry) => {
            assert_eq!(&entry.destination, destination, "real server changed through encode and decode");
        }
        other => panic!("an encoded real server decodes as {other:?}"),
    }
}
